"""Thread count for the Numba kernels: `set_num_threads(n)`, default from EMBEDKIT_THREADS or all cores."""

from __future__ import annotations

import os
import threading

import numba

from embedkit.errors import InputError

_threads: int | None = None
# The count last applied on each calling thread: numba.get_num_threads() costs ~2 us, too much to ask on
# every matmul of a decode step (~130 calls a token).
_applied = threading.local()


def _default_threads() -> int:
    value = os.environ.get("EMBEDKIT_THREADS", "").strip()
    if not value:
        return numba.config.NUMBA_NUM_THREADS
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"EMBEDKIT_THREADS={value!r}: expected a positive integer") from None
    if n < 1:
        raise InputError(f"EMBEDKIT_THREADS={value!r}: expected a positive integer")
    return min(n, numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n: int | None) -> int:
    """Use `n` threads in the kernels (None: EMBEDKIT_THREADS or all cores); returns the count in effect.

    Counts above the number of cores Numba started with are capped to it.
    """
    global _threads
    if n is None:
        _threads = _default_threads()
    else:
        if int(n) < 1:
            raise InputError(f"threads={n}: expected a positive integer")
        _threads = min(int(n), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(_threads)
    _applied.n = _threads
    return _threads


def get_num_threads() -> int:
    """Threads the kernels use."""
    if _threads is None:
        set_num_threads(None)
    return _threads


def apply_num_threads() -> None:
    """Make the calling thread's Numba thread count ours (Numba's setting is per calling thread)."""
    n = _threads
    if n is not None and getattr(_applied, "n", None) == n:
        return
    n = get_num_threads()
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    _applied.n = n


# Spins of an idle OpenMP thread before it sleeps (libgomp's GOMP_SPINCOUNT; ~32 ns a spin on the 2-core dev VM, so
# ~0.1 ms here). libgomp's default, 300,000 (~10 ms), suits a machine with a core per thread; in a server the event
# loop, the HTTP clients and the embedding threads take turns on the same cores, and a kernel thread preempted
# mid-region then leaves its partner spinning through whole time slices: SmolLM2 served one stream at 1.5-6.6 tok/s
# against 15-38 tok/s with 2,000 (shared VM at load 5-10, same minutes). Too few spins cost a futex wake-up (~50 us
# on the VM) per parallel region: a decode step's gaps between regions were 21 us at the median and 74 us at the
# 90th percentile (measured under load, so longer than idle), which this count covers.
SERVER_SPIN_COUNT = 3000
# Spins on a machine already busy when the server starts (1-minute load average at least BUSY_LOAD_PER_CORE per
# core): there a kernel thread's partner is mostly waiting for a core, and each spin is time taken from it and from
# the other processes. Served SmolLM2 tok/s, medians of 6-10 alternating rounds on the shared 2-core VM: 1 stream,
# 3,000 spins 25.7 against 500 spins 43.3 (load 8-11), 500 27.6 against 100 48.8 (load 5.4), 100 43.1 against 0
# 39.6; 8 streams, 3,000 53.5 against 500 116.2 (load 6), 500 91.1 against 100 116.9 (load 4). What so few spins
# cost on an idle machine, where gaps shorter than the spins stay awake, was not measured: it keeps 3,000.
BUSY_SPIN_COUNT = 100
BUSY_LOAD_PER_CORE = 2.0


def server_spin_count(load: float | None = None, cores: int | None = None) -> int:
    """Spins for a server's kernel threads: BUSY_SPIN_COUNT when the 1-minute load average (`load`, default: the
    machine's) reaches BUSY_LOAD_PER_CORE per core (`cores`, default: the cores this process may use), else
    SERVER_SPIN_COUNT."""
    if load is None:
        load = os.getloadavg()[0]
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return BUSY_SPIN_COUNT if load >= BUSY_LOAD_PER_CORE * cores else SERVER_SPIN_COUNT


def bound_spin_waits(spin_count: int | None = None) -> bool:
    """Make idle kernel threads sleep after `spin_count` spins (None: `server_spin_count()`), unless GOMP_SPINCOUNT
    or OMP_WAIT_POLICY is set already. libgomp reads them when it loads (the first parallel kernel), so call this
    before any; returns whether the setting was made."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(int(server_spin_count() if spin_count is None else spin_count))
    return True
