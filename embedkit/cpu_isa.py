"""EMBEDKIT_CPU_ISA: the instruction sets the Numba kernels may use, applied before Numba compiles anything.

`EMBEDKIT_CPU_ISA=avx2` makes a host with AVX-512 run the engine as an AVX2-only host would (how the AVX2 figures
of benchmarks/RESULTS.md are measured where no AVX2-only host is at hand): Numba's compile target becomes the
host's CPU with every AVX-512, AMX and AVX-VNNI feature off (NUMBA_CPU_FEATURES), so the machine code has no
zmm register, and `embedkit.kernels.cpu.isa`, which reads the features Numba compiles for, picks the AVX2
kernels. Where numpy is not imported yet it also gets OpenBLAS's Haswell kernels and numpy's loops without
AVX-512 (`environment()`: OPENBLAS_CORETYPE, NPY_DISABLE_CPU_FEATURES, unless the caller set them; a program that
imports numpy first sets them itself, as `benchmarks/bench_generate.py --isa avx2` does). `native` (the default)
leaves everything to the host. It overrides a NUMBA_CPU_FEATURES of the caller's.

Numba fixes its target when it creates its CPU target context (at the first `@njit` of the process), so this is
applied from `embedkit/__init__.py`, before any kernel module is imported; a process that compiled Numba code
with another target before importing embedkit gets an error from `isa.py` instead of mixed code. Numba's
on-disk cache keys every kernel on the CPU name and feature string as well, so AVX-512 code cached earlier is
never handed back under `avx2` (nor the reverse).

To see it in the machine code: `k.inspect_asm(k.signatures[0]).count("zmm")` of a compiled kernel `k` is 0 under
`EMBEDKIT_CPU_ISA=avx2` (tests/test_cpu_isa.py checks a decode kernel so). Code loaded from the cache has no
assembly to show: inspect with a fresh NUMBA_CACHE_DIR.
"""

from __future__ import annotations

import os
import sys

CHOICES = ("native", "avx2")
# LLVM feature names (prefixes) turned off under `avx2`: the AVX-512 families, AMX and the VEX-coded VNNI / IFMA
# extensions that came with them (an AVX2-only x86 host, e.g. an AMD EPYC up to Zen 3, has none of them)
_OFF_UNDER_AVX2 = ("avx512", "amx", "avxvnni", "avxifma", "avxneconvert", "avx10", "evex512")

# numpy's dispatch targets with AVX-512 (numpy 1.x and 2.x names; those a build lacks are ignored with an
# ImportWarning, hidden by default)
_NUMPY_AVX512 = "X86_V4 AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"

_problem: str | None = None


def requested() -> str:
    """The EMBEDKIT_CPU_ISA value in effect, lower-cased (`native` where unset)."""
    return os.environ.get("EMBEDKIT_CPU_ISA", "").strip().lower() or "native"


def environment(choice: str) -> dict[str, str]:
    """The variables a fresh process needs to run under EMBEDKIT_CPU_ISA=`choice` from its start, numpy and its
    BLAS included (the Numba target follows from EMBEDKIT_CPU_ISA itself)."""
    if choice != "avx2":
        return {"EMBEDKIT_CPU_ISA": choice}
    return {"EMBEDKIT_CPU_ISA": choice, "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512}


def avx2_features() -> str:
    """The host's LLVM feature string with the features an AVX2-only host lacks turned off ("+avx2,-avx512f,...")."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    for name in list(features):
        if name.startswith(_OFF_UNDER_AVX2):
            features[name] = False
    return features.flatten()


def _numba_target_features() -> str | None:
    """The feature string of Numba's CPU target where that target already exists in this process, else None."""
    registry = sys.modules.get("numba.core.registry")
    if registry is None:
        return None
    ctx = registry.cpu_target.__dict__.get("_toplevel_target_context")
    if ctx is None:
        return None
    return ctx.codegen()._tm_features


def apply() -> None:
    """Set Numba's compile target from EMBEDKIT_CPU_ISA (nothing for `native`); a bad value or a target Numba
    already fixed otherwise is kept for `problem()` (raised where the kernels are imported, as one error line)."""
    global _problem
    choice = requested()
    if choice == "native":
        return
    if choice not in CHOICES:
        _problem = f"EMBEDKIT_CPU_ISA={choice!r}: expected one of {', '.join(CHOICES)}"
        return
    try:
        features = avx2_features()
    except Exception as e:  # noqa: BLE001 - llvmlite missing or host unknown: said once, where kernels load
        _problem = f"EMBEDKIT_CPU_ISA={choice}: the host's CPU features are unknown ({e})"
        return
    if "+avx2" not in features.split(","):
        _problem = f"EMBEDKIT_CPU_ISA={choice}: this CPU has no AVX2"
        return
    os.environ["NUMBA_CPU_FEATURES"] = features  # read when Numba is imported, and by child processes
    if "numpy" not in sys.modules:  # numpy and OpenBLAS read theirs when loaded
        for name, value in environment(choice).items():
            os.environ.setdefault(name, value)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # Numba imported already: its config too (its target may not exist yet)
        config.CPU_FEATURES = features
    fixed = _numba_target_features()
    if fixed is not None and fixed != features:
        _problem = (f"EMBEDKIT_CPU_ISA={choice}: Numba compiled code for another target before embedkit was "
                    "imported; set EMBEDKIT_CPU_ISA before the process starts")  # fmt: skip


def problem() -> str | None:
    """Why EMBEDKIT_CPU_ISA could not be applied, or None."""
    return _problem
