"""Run one op over blocks of rows on a few Python threads, each with single-threaded BLAS.

Why not OpenBLAS's own threads plus Numba's `prange`: an encoder forward alternates BLAS calls with
Numba loops, and each pool's workers spin for a while after their region ends. On the 2-core dev VM
the spinning pool took the core the other one needed: MiniLM's up-projection + GELU + LayerNorm took
210 ms in sequence against 91 ms for the three timed alone. Here the threads are plain Python threads
that sleep between ops, and every block runs serially inside (BLAS held to one thread, Numba kernels
compiled `nogil`). `concurrent_callers()` goes one step further for callers that run whole forward
passes on several threads at once: every op then stays on its calling thread.

OpenBLAS's thread count is process-wide, set to one through threadpoolctl while any split op that
calls BLAS (or a `concurrent_callers()` context) is running, and restored after. Without threadpoolctl
such ops run unsplit on the calling thread (and BLAS uses its own threads).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedkit.kernels.cpu.threads import get_num_threads

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas: list | None = None  # threadpoolctl LibController objects of the BLAS libraries, once looked up
_inline_depth = 0  # > 0 inside concurrent_callers(): run_blocks runs fn on the calling thread
# Ranges per thread in run_blocks (more: better balance under load, more per-call overhead).
BLOCKS_PER_THREAD = 4


def _blas_controllers() -> list:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = []
        else:
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


def can_split_blas() -> bool:
    """True when BLAS can be held to one thread while blocks run (threadpoolctl found a BLAS library)."""
    return bool(_blas_controllers())


class _SingleThreadBlas:
    """Context manager: every BLAS library at one thread while any thread is inside, then restored."""

    users = 0
    saved: list = []
    lock = threading.Lock()

    def __enter__(self) -> None:
        cls = _SingleThreadBlas
        with cls.lock:
            if cls.users == 0:
                cls.saved = [(c, c.get_num_threads()) for c in _blas_controllers()]
                for c, n in cls.saved:
                    if n != 1:
                        c.set_num_threads(1)
            cls.users += 1

    def __exit__(self, *exc: object) -> None:
        cls = _SingleThreadBlas
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                for c, n in cls.saved:
                    if n != 1:
                        c.set_num_threads(n)


@contextlib.contextmanager
def concurrent_callers() -> Iterator[None]:
    """A context in which several threads call ops at once (whole forward passes in parallel).

    Each op then runs on its calling thread (no blocks handed to other threads) and BLAS is held to
    one thread, so the callers share the cores without two levels of threads.
    """
    global _inline_depth
    with _lock:
        _inline_depth += 1
    try:
        with _SingleThreadBlas():
            yield
    finally:
        with _lock:
            _inline_depth -= 1


def single_thread_blas() -> contextlib.AbstractContextManager[None]:
    """A context in which BLAS stays at one thread (ops still split over the kernel threads by `run_blocks`):
    for a whole forward pass, so that its unsplit BLAS calls (attention of one sequence, small products) wake
    no BLAS threads that then spin beside the kernel threads, and split ops skip the per-op switch."""
    return _SingleThreadBlas() if can_split_blas() else contextlib.nullcontext()


def _executor(n_workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n_workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="embedkit-rows")
            _pool_size = n_workers
        return _pool


def block_bounds(cost: np.ndarray, n_blocks: int) -> list[tuple[int, int]]:
    """Split items 0..len(cost) into up to n_blocks contiguous, non-empty ranges of about equal total cost."""
    n = len(cost)
    n_blocks = max(1, min(n_blocks, n))
    cum = np.cumsum(np.asarray(cost, dtype=np.float64))
    total = cum[-1] if n else 0.0
    cuts = [0]
    for i in range(1, n_blocks):
        c = int(np.searchsorted(cum, total * i / n_blocks)) + 1
        cuts.append(min(max(c, cuts[-1] + 1), n - (n_blocks - i)))
    cuts.append(n)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def run_blocks(
    fn: Callable[[int, int], None],
    n_items: int,
    min_items: int = 1,
    cost: np.ndarray | None = None,
    blas: bool = False,
) -> None:
    """Call fn(start, stop) over ranges covering 0..n_items, in parallel on the kernel threads.

    Ranges hold at least `min_items` items (fewer items: one call on this thread); `cost` (one value per
    item) balances them. There are a few ranges per thread, taken in turn by whichever thread is free,
    so a thread the OS preempts (a busy machine) delays the op by one range, not by half of the work.
    `blas=True`: fn calls BLAS (numpy matmul), which is then held to one thread.
    """
    n_threads = get_num_threads()
    n_blocks = min(BLOCKS_PER_THREAD * n_threads, n_items // max(min_items, 1))
    if _inline_depth or n_threads <= 1 or n_blocks <= 1 or (blas and not can_split_blas()):
        fn(0, n_items)
        return
    if cost is None:
        cuts = np.linspace(0, n_items, n_blocks + 1).round().astype(np.int64)
        bounds = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    else:
        bounds = block_bounds(cost, n_blocks)
    queue = iter(bounds)  # next() on it is atomic under the GIL
    pool = _executor(n_threads - 1)

    def drain() -> None:
        for a, b in queue:
            fn(a, b)

    with _SingleThreadBlas() if blas else contextlib.nullcontext():
        futures = [pool.submit(drain) for _ in range(min(n_threads, len(bounds)) - 1)]
        try:
            drain()
        finally:
            for f in futures:
                f.result()
