"""ggml_exact activation quantizers and quantized matmuls against llama.cpp's own x86 (AVX2) library.

Compared, with zero tolerance (byte equality of the quantized blocks, equality of the float32 bits of the
products), against goldens from tests/data/ggml_exact/make_quant_goldens.py (quant.npz):
- quantize_q8_0 / q8_1 / q8_K vs ggml's quantize_row_q8_0 / q8_1 / q8_K (the x86 from_float functions);
- mul_mat_vec_dot vs ggml_vec_dot_{q8_0_q8_0, q5_0_q8_0, q4_1_q8_1, q4_K_q8_K, q6_K_q8_K};
- for Q8_0/Q5_0 also vs llamafile_sgemm (tinyBLAS_Q0_AVX, 3 thread slices): its per-output arithmetic is
  vec_dot's, so the same kernel must match both;
- mul_mat_q vs a whole ggml MUL_MAT op (float32 activations in, 2 threads), which checks the kernel choice
  (tinyBLAS, vec_dot, or the tiled K-quant path for >= 8 rows).
When llama_cpp is importable the same comparisons also run live on fresh random inputs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from embedkit.kernels.cpu.ggml_exact import dots, quantize

DATA = Path(__file__).parent / "data" / "ggml_exact"
_spec = importlib.util.spec_from_file_location("make_quant_goldens", DATA / "make_quant_goldens.py")
gold = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gold)

QUANTIZERS = {8: quantize.quantize_q8_0, 9: quantize.quantize_q8_1, 15: quantize.quantize_q8_K}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
        return False
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def goldens() -> dict[str, np.ndarray]:
    with np.load(DATA / "quant.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def oracle():
    d = gold.lib_dir()
    if d is None:
        pytest.skip("llama_cpp is not installed")
    return gold.Oracle(d)


def _cases(data: dict[str, np.ndarray], prefix: str):
    for key in sorted(data):
        if key.startswith(prefix):
            i, w_type = (int(v) for v in key[len(prefix):].split("_"))
            yield i, w_type, data[key]


def test_quantizers_match_goldens(goldens) -> None:
    n = 0
    for i in range(len(gold.SHAPES)):
        for act, fn in QUANTIZERS.items():
            if f"q{act}_{i}" in goldens:
                np.testing.assert_array_equal(fn(goldens[f"x{i}"]), goldens[f"q{act}_{i}"], err_msg=f"q{act}_{i}")
                n += 1
    assert n >= 20


def test_vec_dot_matches_goldens(goldens) -> None:
    n = 0
    for i, w_type, want in _cases(goldens, "vd"):
        act = gold.WEIGHT_TYPES[w_type][3]
        got = dots.mul_mat_vec_dot(goldens[f"w{i}_{w_type}"], w_type, goldens[f"q{act}_{i}"], gold.SHAPES[i][0])
        assert _same_bits(got, want), f"vec_dot shape {i} type {w_type}"
        n += 1
    assert n >= 30


def test_tinyblas_equals_vec_dot(goldens) -> None:
    """llamafile_sgemm's outputs (Q8_0, Q5_0) are vec_dot's bits: mul_mat_vec_dot reproduces them."""
    n = 0
    for i, w_type, want in _cases(goldens, "sg"):
        got = dots.mul_mat_vec_dot(goldens[f"w{i}_{w_type}"], w_type, goldens[f"q8_{i}"], gold.SHAPES[i][0])
        assert _same_bits(got, want), f"sgemm shape {i} type {w_type}"
        assert _same_bits(goldens[f"vd{i}_{w_type}"], want)
        n += 1
    assert n >= 10


def test_mul_mat_q_matches_ggml_op(goldens) -> None:
    n = 0
    for i, w_type, want in _cases(goldens, "mm"):
        # the ggml graph keeps its weights in a plain buffer, so Q4_K is not repacked there
        got = dots.mul_mat_q(goldens[f"w{i}_{w_type}"], w_type, goldens[f"x{i}"], gold.SHAPES[i][0], repack=False)
        assert _same_bits(got, want), f"MUL_MAT shape {i} type {w_type}"
        n += 1
    assert n >= 30


def test_tiled_path_differs_from_vec_dot(goldens) -> None:
    """For >= 8 rows ggml's K-quant MUL_MAT is the tiled kernel, whose rounding is not vec_dot's."""
    differs = 0
    for i, w_type, want in _cases(goldens, "mm"):
        if w_type in (12, 14) and gold.SHAPES[i][2] >= dots.TILED_MIN_TOKENS:
            differs += not _same_bits(goldens[f"vd{i}_{w_type}"], want)
    assert differs >= 2


def test_results_do_not_depend_on_thread_count(goldens) -> None:
    old = numba.get_num_threads()
    try:
        for w_type in (6, 14):
            i = 3
            act = gold.WEIGHT_TYPES[w_type][3]
            args = (goldens[f"w{i}_{w_type}"], w_type, goldens[f"q{act}_{i}"], gold.SHAPES[i][0])
            outs = []
            for nt in sorted({1, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(nt)
                outs.append(dots.mul_mat_vec_dot(*args))
            assert all(_same_bits(o, outs[0]) for o in outs)
    finally:
        numba.set_num_threads(old)


def test_rejects_mismatched_shapes(goldens) -> None:
    w, xq = goldens["w0_8"], goldens["q8_0"]
    with pytest.raises(ValueError):
        dots.mul_mat_vec_dot(w, 8, xq[:, :-34], 640)
    with pytest.raises(ValueError):
        dots.mul_mat_vec_dot(w, 2, xq, 640)
    with pytest.raises(ValueError):
        quantize.quantize_q8_K(np.ones((1, 640), np.float32))


# ---- live comparisons on fresh inputs (dev machine with llama_cpp) ----


@pytest.mark.parametrize("seed", range(4))
def test_live_quantizers(oracle, seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    for n_cols in (256, 576, 640, 896, 1024, 1536, 2048):
        x = gold.random_activations(rng, 3, n_cols)
        if seed % 2:
            x = (x * np.float32(10.0 ** rng.uniform(-5, 4))).astype(np.float32)
        for act, fn in QUANTIZERS.items():
            if n_cols % gold.ACT_TYPES[act][0] == 0:
                np.testing.assert_array_equal(fn(x), oracle.quantize(act, x), err_msg=f"q{act} {n_cols}")


@pytest.mark.parametrize("w_type", sorted(gold.WEIGHT_TYPES))
def test_live_vec_dot_and_mul_mat(oracle, w_type: int) -> None:
    rng = np.random.default_rng(2000 + w_type)
    block, _, _, act = gold.WEIGHT_TYPES[w_type]
    for n_cols in (640, 896, 1024, 2048, 576, 1536):
        if n_cols % block:
            continue
        for n_tok in (1, 3, 8):
            x = gold.random_activations(rng, n_tok, n_cols)
            w = gold.random_weights(rng, w_type, 11, n_cols)
            xq = oracle.quantize(act, x)
            assert _same_bits(dots.mul_mat_vec_dot(w, w_type, xq, n_cols), oracle.vec_dot(w_type, w, xq, n_cols))
            assert _same_bits(dots.mul_mat_q(w, w_type, x, n_cols, repack=False), oracle.mul_mat(w_type, w, x, n_cols))
            if w_type in (8, 6) and n_tok >= 2:
                assert _same_bits(dots.mul_mat_vec_dot(w, w_type, xq, n_cols), oracle.sgemm(w_type, w, xq, n_cols))


_PORTABLE = """
import sys
import numpy as np
import embedkit.kernels.cpu.ggml_exact.dots as dots
dots.HAS_AVX2 = False
z = dict(np.load(sys.argv[1]))
shapes = eval(sys.argv[2])
for key in sorted(z):
    if key.startswith("mm"):
        i, w_type = (int(v) for v in key[2:].split("_"))
        got = dots.mul_mat_q(z[f"w{i}_{w_type}"], w_type, z[f"x{i}"], shapes[i][0], repack=False)
        assert np.array_equal(got.view(np.uint32), z[key].view(np.uint32)), key
print("ok")
"""


@pytest.mark.slow
def test_portable_ir_matches_goldens(tmp_path) -> None:
    """The non-AVX2 IR (compiled here in a fresh process with its own Numba cache) gives the same bits."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", _PORTABLE, str(DATA / "quant.npz"), repr(gold.SHAPES)],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
