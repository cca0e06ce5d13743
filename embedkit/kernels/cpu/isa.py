"""What the Numba compile target offers (instruction sets) and what the decode kernels do with it.

The features are those Numba compiles for: NUMBA_CPU_FEATURES where set, else the host's. EMBEDKIT_CPU_ISA=avx2
(`embedkit.cpu_isa`) sets it to the host's features without AVX-512, AMX and AVX-VNNI, so an AVX-512 host runs
as an AVX2-only one would: these flags and the machine code Numba emits both follow it.
Numba's cache keys a kernel on its own file's timestamp only: after editing this module or int8dot.py, touch the
files of the kernels that use them (matvec_int8.py, q4_1_packed.py, q5_0_packed.py, multirow_int16.py) or give
the process a fresh NUMBA_CACHE_DIR, or stale code keeps running (measurements included).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from embedkit import cpu_isa
from embedkit.errors import InputError

if cpu_isa.problem():
    raise InputError(cpu_isa.problem())


def target_features() -> set[str]:
    """The CPU features Numba compiles for (see the module docstring); empty where unknown."""
    try:
        from numba.core import config

        if config.CPU_FEATURES is not None:
            flat = config.CPU_FEATURES
        else:
            import llvmlite.binding as llvm

            flat = llvm.get_host_cpu_features().flatten()
    except Exception:  # features unknown: the portable path is always correct
        return set()
    return {f[1:] for f in flat.split(",") if f.startswith("+")}


_FEATURES = target_features()
HAS_AVX2 = "avx2" in _FEATURES
HAS_AVX512 = "avx512bw" in _FEATURES
HAS_AVX512_VNNI = HAS_AVX512 and "avx512vnni" in _FEATURES  # vpdpwssd: a vpmaddwd and its add in one
# A lone f16 converted with F16C's vcvtph2ps (no AVX512-FP16 vmovsh): LLVM reads it with vpinsrw into whatever
# vector register it picks for the untouched lanes, often a live float accumulator, which chains each block's
# scale to the previous block's result (a dot loop then runs at that chain's latency, ~18 cycles a block).
# `int8dot._f16` converts it with integer operations there instead (exact, no vector register read).
HALF_BY_INTEGERS = "f16c" in _FEATURES and "avx512fp16" not in _FEATURES



def _intel_host() -> bool:
    """True where the host's CPU is an Intel one (/proc/cpuinfo's vendor_id), whatever the compile target."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


# Software prefetch distance of the decode matvecs, in bytes ahead of the block being read (0: none). On the
# Intel Xeon hosts (2-vCPU KVM guests) the hardware prefetchers leave a weight stream from L3/DRAM latency
# bound: Gemma 3's 178 MB Q8_0 head took 27 ms a pass on one thread, 15-17 ms (the rate of a plain read loop)
# with prefetches 4 KiB ahead (benchmarks/RESULTS.md, issue 26). That is the memory system's doing, not the
# instruction set's, so an Intel host compiled for AVX2 only (EMBEDKIT_CPU_ISA=avx2) prefetches too; other
# hosts without AVX-512 (the AMD EPYC ones) keep the code measured there. The host's CPU name is part of
# Numba's cache key, so code cached on another host is not handed back with another distance.
PREFETCH_BYTES = 4096 if HAS_AVX512 or _intel_host() else 0


def prefetch_ahead(builder: ir.IRBuilder, ptr: ir.Value) -> None:
    """Emit a prefetch (read, into all cache levels) of the byte PREFETCH_BYTES past `ptr` (an i8*); nothing
    where PREFETCH_BYTES is 0."""
    if not PREFETCH_BYTES:
        return
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
    )
    ahead = builder.gep(builder.bitcast(ptr, i8p), [ir.Constant(ir.IntType(64), PREFETCH_BYTES)])
    builder.call(fn, [ahead, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
