"""The K-quant matmul paths of llama.cpp's AVX2 CPU backend other than vec_dot, reproduced bit for bit.

Compared, all with tolerance zero (float32 bit patterns must be equal):

- `dots.mul_mat_q4_K_repacked` (Q4_K weights repacked to block_q4_Kx8: gemm for rows in groups of four, gemv
  for the rest) and `dots.mul_mat_tiled` for Q6_K / Q4_K (ggml's tiled matmul, >= 8 rows) against the
  goldens in tests/data/ggml_exact/kquant.npz (made by make_kquant_goldens.py): ggml's own kernels on random
  weights and activations, and llama.cpp's MUL_MAT inputs and outputs while running Gemma 3 270M and
  Qwen2.5-Coder 0.5B (weights read from the model files);
- when llama_cpp is importable, the same functions and the Q8_K quantizer against the live oracles
  (ggml_quantize_mat_q8_K_4x8, quantize_row_q8_K, ggml_gemm/gemv_q4_K_8x8_q8_K on our block_q4_Kx8 bytes,
  a ggml graph's MUL_MAT with 1, 2 and 4 threads) on fresh random inputs of the models' shapes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ggml_exact_checks import assert_bits_equal, golden_cases

from embedkit.gguf.reader import GGUFFile
from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact.dots import mul_mat_q4_K_repacked, mul_mat_tiled
from embedkit.kernels.cpu.ggml_exact.quantize import quantize_q8_K

DATA = Path(__file__).resolve().parent / "data" / "ggml_exact"
sys.path.insert(0, str(DATA))
from make_kquant_goldens import repack_q4_K_8x8  # noqa: E402  (the block_q4_Kx8 bytes ggml's kernels read)

GOLDEN = np.load(DATA / "kquant.npz")
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None




def _tiled(kind: str, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    ggml_type = GGMLType.Q6_K if kind == "q6_K" else GGMLType.Q4_K
    return mul_mat_tiled(w, ggml_type, quantize_q8_K(x), x.shape[1])


def _repack(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return mul_mat_q4_K_repacked(w, x, x.shape[1])


@pytest.mark.parametrize("i", golden_cases(GOLDEN, "repack"))
def test_repack_matches_golden(i: int) -> None:
    w, x = GOLDEN[f"repack/{i}/w"], GOLDEN[f"repack/{i}/x"]
    assert_bits_equal(_repack(w, x), GOLDEN[f"repack/{i}/y"])


@pytest.mark.parametrize("i", golden_cases(GOLDEN, "tiled"))
def test_tiled_matches_golden(i: int) -> None:
    kind = str(GOLDEN[f"tiled/{i}/kind"])
    assert_bits_equal(_tiled(kind, GOLDEN[f"tiled/{i}/w"], GOLDEN[f"tiled/{i}/x"]), GOLDEN[f"tiled/{i}/y"])


@pytest.mark.slow
@pytest.mark.parametrize("i", golden_cases(GOLDEN, "model"))
def test_matches_llama_cpp_on_real_models(i: int, request: pytest.FixtureRequest) -> None:
    fixture, weight, kind = (str(v) for v in GOLDEN[f"model/{i}/info"])
    tensor = GGUFFile(request.getfixturevalue(fixture)).tensor(weight)
    w, x = tensor.rows_view(), GOLDEN[f"model/{i}/x"]
    if kind == "repack":
        assert tensor.ggml_type == GGMLType.Q4_K and w.shape[0] % 8 == 0
        got = _repack(w, x)
    else:
        assert tensor.ggml_type == GGMLType.Q6_K
        got = _tiled("q6_K", w, x)
    assert_bits_equal(got, GOLDEN[f"model/{i}/y"])


def test_repack_layout_shape() -> None:
    w = GOLDEN["repack/0/w"]
    x8 = repack_q4_K_8x8(w)
    assert x8.shape == (w.shape[0] // 8, w.shape[1] // 144 * 1152)
    # d and dmin of the eight rows lead each interleaved block
    assert np.array_equal(x8[0, 0:16].reshape(8, 2), w[:8, 0:2])
    assert np.array_equal(x8[0, 16:32].reshape(8, 2), w[:8, 2:4])


# ---- live comparisons with llama.cpp's libggml (dev machine) --------------------------------------------------

live = pytest.mark.skipif(not HAVE_LLAMA, reason="llama_cpp not installed (goldens above cover CI)")


@pytest.fixture(scope="module")
def mk():
    import make_kquant_goldens

    make_kquant_goldens.ggml_cpu()
    return make_kquant_goldens


@live
def test_live_q8_K_quantizers(mk) -> None:
    rng = np.random.default_rng(11)
    for k in (256, 1024, 2048, 4864):
        x = mk.random_activations(rng, 8, k)
        nb = k // 256
        xq8 = quantize_q8_K(x).reshape(8, nb, 292)
        xd = xq8[:, :, 0:4].copy().view(np.float32).reshape(8, nb)
        xq = xq8[:, :, 4:260].view(np.int8).reshape(8, k)
        oracle = mk.oracle_q8_K_4x8(x[:4])
        d4 = oracle[:, 0:16].copy().view(np.float32).reshape(nb, 4)
        q4 = oracle[:, 16:1040].view(np.int8).reshape(nb, 32, 4, 8).transpose(2, 0, 1, 3).reshape(4, k)
        # the 4-row quantizer takes +max on a +/-max tie where quantize_row_q8_K takes the first max: codes
        # and scale then change sign together, so compare the dequantized values (exact in float64)
        ours = xd[:4].astype(np.float64).repeat(256, axis=1) * xq[:4]
        theirs = d4.T.astype(np.float64).repeat(256, axis=1) * q4
        assert np.array_equal(ours, theirs)
        assert np.array_equal(np.abs(d4.T), np.abs(xd[:4]))
        for t in range(4, 8):
            row = mk.oracle_q8_K_row(x[t])
            assert np.array_equal(row[:, 0:4].copy().view(np.float32).ravel().view(np.uint32), xd[t].view(np.uint32))
            assert np.array_equal(row[:, 4:260].view(np.int8).ravel(), xq[t])


@live
@pytest.mark.parametrize(("n_out", "k"), [(640, 1024), (64, 2048), (96, 4864), (40, 256)])
def test_live_repack(mk, n_out: int, k: int) -> None:
    rng = np.random.default_rng(n_out * 7 + k)
    w = mk.random_q4_K(rng, n_out, k)
    w_x8 = repack_q4_K_8x8(w)
    for n_tok in (1, 2, 3, 4, 5, 8, 13, 32):
        x = mk.random_activations(rng, n_tok, k)
        assert_bits_equal(_repack(w, x), mk.oracle_mul_mat_repack(w_x8, n_out, x))


@live
@pytest.mark.parametrize(("kind", "n_out", "k"), [("q6_K", 640, 2048), ("q6_K", 72, 4864), ("q6_K", 30, 256),
                                                  ("q4_K", 36, 1024), ("q4_K", 20, 2048)])
def test_live_tiled(mk, kind: str, n_out: int, k: int) -> None:
    rng = np.random.default_rng(n_out * 5 + k)
    w = mk.random_q6_K(rng, n_out, k) if kind == "q6_K" else mk.random_q4_K(rng, n_out, k)
    ggml_type = mk.TYPE_Q6_K if kind == "q6_K" else mk.TYPE_Q4_K
    for n_tok, n_threads in ((8, 1), (9, 2), (17, 4), (32, 2)):
        x = mk.random_activations(rng, n_tok, k)
        assert_bits_equal(_tiled(kind, w, x), mk.oracle_mul_mat_graph(w, ggml_type, x, n_threads))
