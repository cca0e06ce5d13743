"""EMBEDKIT_CPU_ISA: the kernel choice (`kernels.cpu.isa`) and Numba's machine code both follow it.

Each case runs in a fresh interpreter: Numba fixes its compile target at the first `@njit` of a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the ISA flags, and the zmm registers in the machine code of a decode kernel that has a 512-bit form
# (multirow_int16's q8_0 rows: vpmaddwd/vpdpwssd on zmm where the target has AVX-512)
PROBE = """
import json
import embedkit  # first: numpy and OpenBLAS read their instruction sets when loaded
import numba
import numpy as np
from threadpoolctl import threadpool_info
from embedkit.kernels.cpu import isa
from embedkit.kernels.cpu.multirow_int16 import int16_rows_serial, pair_layout

rng = np.random.default_rng(26)
w = rng.integers(0, 256, size=(4, 34 * 2), dtype=np.uint8)
w[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # finite block scales
w[:, 34:36] = np.frombuffer(np.float16(0.02).tobytes(), np.uint8)
xq, xd, xsum = pair_layout(rng.standard_normal((2, 64)).astype(np.float32))
y = np.zeros((2, 4), dtype=np.float32)
k = int16_rows_serial("q8_0")
k(w, xq, xd, xsum, y)
asm = k.inspect_asm(k.signatures[0]) if not sum(k.stats.cache_hits.values()) else ""  # cached code: no asm
print(json.dumps({"avx2": isa.HAS_AVX2, "avx512": isa.HAS_AVX512, "vnni": isa.HAS_AVX512_VNNI,
                  "features": numba.config.CPU_FEATURES or "",
                  "blas": [i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"],
                  "cache_hits": sum(k.stats.cache_hits.values()), "asm_lines": asm.count("\\n"),
                  "zmm": asm.count("zmm")}))
"""


def _run(code: str, isa: str | None, cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    own = ("NUMBA_CPU", "EMBEDKIT_CPU_ISA", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env["PYTHONPATH"] = str(REPO)
    if isa is not None:
        env["EMBEDKIT_CPU_ISA"] = isa
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def _probe(isa: str | None, cache_dir: Path) -> dict:
    out = _run(PROBE, isa, cache_dir)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _host_has(feature: str) -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get(feature))


@pytest.mark.skipif(not _host_has("avx2"), reason="the host has no AVX2")
def test_avx2_restricts_kernel_choice_machine_code_and_blas(tmp_path):
    native = _probe(None, tmp_path)  # compiles the kernel for the host into a fresh on-disk cache
    if _host_has("avx512bw"):  # the zmm count below means something: the host's code has them
        assert native["avx512"] and native["asm_lines"] > 100 and native["zmm"] > 0
    got = _probe("avx2", tmp_path)
    # the same cache, yet no hit: Numba keys it on the target's features, so no AVX-512 code comes back
    assert got["cache_hits"] == 0 and got["asm_lines"] > 100
    assert got["avx2"] and not got["avx512"] and not got["vnni"]
    assert "-avx512f" in got["features"].split(",") and "+avx2" in got["features"].split(",")
    assert got["zmm"] == 0
    assert all(arch == "Haswell" for arch in got["blas"])


def test_bad_value_is_one_clear_error():
    out = _run("import embedkit.kernels.cpu", "avx3")
    assert out.returncode != 0
    assert "EMBEDKIT_CPU_ISA='avx3': expected one of native, avx2" in out.stderr


@pytest.mark.skipif(not _host_has("avx2"), reason="the host has no AVX2")
def test_target_fixed_before_embedkit_is_refused():
    code = "import numba\nnumba.njit(lambda x: x + 1)(1)\nimport embedkit.kernels.cpu\n"
    out = _run(code, "avx2")
    assert out.returncode != 0 and "before embedkit was imported" in out.stderr


def test_f16_by_integers_is_exact_for_every_half():
    """The AVX2 kernels' f16 -> float conversion (`int8dot._f16_by_integers`) gives numpy's float32 of every one of
    the 65536 bit patterns, bit for bit: zeros, subnormals, normals, infinities and NaN payloads."""
    import numpy as np
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from embedkit.kernels.cpu.int8dot import _f16_by_integers

    @intrinsic
    def convert(typingctx, word):
        def codegen(context, builder, sig, args):
            return _f16_by_integers(builder, builder.trunc(args[0], ir.IntType(16)))

        return types.float32(types.int32), codegen

    @njit
    def every_half(out):
        for i in range(65536):
            out[i] = convert(np.int32(i))

    got = np.empty(65536, dtype=np.float32)
    every_half(got)
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
