"""Q4_0 weights as llama.cpp's AVX2 CPU backend multiplies them, reproduced bit for bit.

Compared, all with tolerance zero (float32 bit patterns must be equal):

- `dots.mul_mat_q` / `dots.mul_mat_q4_0_repacked` for Q4_0 weights with n_out % 8 == 0 against ggml's
  repacked kernels (ggml_gemm/gemv_q4_0_8x8_q8_0 on block_q4_0x8 bytes, rows in groups of four through the
  gemm, the rest through the gemv), and `dots.mul_mat_q(..., repack=False)` / `dots.mul_mat_vec_dot` against
  a ggml graph's MUL_MAT with the weight in a plain context (tinyBLAS_Q0_AVX from 2 rows, vec_dot for 1) and
  against ggml_vec_dot_q4_0_q8_0 per output: goldens in tests/data/ggml_exact/q4_0.npz
  (make_q4_0_goldens.py);
- embedkit's all-position logits of random Q4_0 models (llama, qwen2 with a 324-row output head, gemma3)
  against llama.cpp's, stored in the same file;
- when llama_cpp is importable, the same against the live oracles on fresh random inputs of model widths,
  and our Q8_0 activation bytes against quantize_row_q8_0 and ggml_quantize_mat_q8_0_4x8 (interleaved).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ggml_exact_checks import assert_bits_equal, golden_cases

from embedkit.kernels.cpu.ggml_exact import dots
from embedkit.kernels.cpu.ggml_exact.quantize import quantize_q8_0

DATA = Path(__file__).resolve().parent / "data" / "ggml_exact"
sys.path.insert(0, str(DATA))
import make_q4_0_goldens as q4g  # noqa: E402  (case lists, model writer, and the live oracles)

GOLDEN = np.load(DATA / "q4_0.npz")
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None




@pytest.mark.parametrize("i", golden_cases(GOLDEN, "repack"))
def test_repacked_matches_golden(i: int) -> None:
    w, x = GOLDEN[f"repack/{i}/w"], GOLDEN[f"repack/{i}/x"]
    assert_bits_equal(dots.mul_mat_q(w, dots.Q4_0, x, x.shape[1]), GOLDEN[f"repack/{i}/y"])
    assert_bits_equal(dots.mul_mat_q4_0_repacked(w, x, x.shape[1]), GOLDEN[f"repack/{i}/y"])


@pytest.mark.parametrize("i", golden_cases(GOLDEN, "plain"))
def test_plain_matches_golden(i: int) -> None:
    w, x = GOLDEN[f"plain/{i}/w"], GOLDEN[f"plain/{i}/x"]
    assert_bits_equal(dots.mul_mat_q(w, dots.Q4_0, x, x.shape[1], repack=False), GOLDEN[f"plain/{i}/y"])
    assert_bits_equal(dots.mul_mat_vec_dot(w, dots.Q4_0, quantize_q8_0(x), x.shape[1]), GOLDEN[f"plain/{i}/vd"])
    if w.shape[0] % 8:  # the shapes llama.cpp does not repack take this path whatever `repack` says
        assert_bits_equal(dots.mul_mat_q(w, dots.Q4_0, x, x.shape[1]), GOLDEN[f"plain/{i}/y"])


@pytest.mark.parametrize("i", golden_cases(GOLDEN, "model"))
def test_model_logits_match_golden(i: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedkit.models import load_model

    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")  # llama.cpp's arithmetic, the goldens' bits

    path = q4g.write_case_model(tmp_path / "m.gguf", i)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(GOLDEN[f"model/{i}/sha256"]), "writer changed"
    want = GOLDEN[f"model/{i}/logits"]
    m = load_model(str(path))
    ours = m.forward(q4g.model_prompt(want.shape[0]), m.new_state(32), 0, all_positions=True)
    assert_bits_equal(np.asarray(ours, np.float32), want)


@pytest.mark.skipif(not HAVE_LLAMA, reason="live oracle needs llama_cpp")
@pytest.mark.parametrize("k", [640, 896, 1024, 2048, 576, 1536])
def test_live_against_ggml(k: int) -> None:
    rng = np.random.default_rng(1000 + k)
    x = q4g.random_activations(rng, 9, k)
    xq = quantize_q8_0(x)
    assert np.array_equal(xq, q4g.oracle_q8_0_rows(x))
    for t in range(0, 8, 4):
        assert np.array_equal(q4g.interleave_q8_0_4x8(xq[t:t + 4]), q4g.oracle_q8_0_4x8(x[t:t + 4]))
    for n_out, n_tok in ((16, 1), (24, 3), (8, 4), (16, 9)):
        w = q4g.random_q4_0(rng, n_out, k)
        assert_bits_equal(dots.mul_mat_q(w, dots.Q4_0, x[:n_tok], k), q4g.oracle_mul_mat_repack(w, x[:n_tok]))
    for n_out, n_tok in ((13, 1), (12, 2), (17, 5), (16, 7)):
        w = q4g.random_q4_0(rng, n_out, k)
        want = q4g.oracle_mul_mat_plain(w, x[:n_tok])
        assert_bits_equal(dots.mul_mat_q(w, dots.Q4_0, x[:n_tok], k, repack=False), want)
        assert_bits_equal(want, q4g.oracle_vec_dot(w, xq[:n_tok], k))
