"""Q5_K weights times float32 activations, reproduced bit for bit as llama.cpp's x86 AVX2 CPU backend does them.

Compared, all with tolerance zero (float32 bit patterns must be equal):

- `dots.mul_mat_vec_dot` for Q5_K (ggml_vec_dot_q5_K_q8_K on activations quantized to Q8_K) against the
  `vec/*` goldens of tests/data/ggml_exact/q5_k.npz (made by make_q5_k_goldens.py from ggml's own function);
- `dots.mul_mat_q` for Q5_K (vec_dot below 8 activation rows, the tiled K-quant matmul from 8 on: ggml does
  not repack Q5_K on x86) and `dots.mul_mat_tiled` against the `graph/*` goldens, a ggml graph's MUL_MAT;
- when llama_cpp is importable, the same against the live oracles on fresh random weights and activations
  (1 and 2 graph threads), and all-position logits of a random Q5_K llama model from embedkit (llama.cpp's
  arithmetic backend) against llama.cpp's own logits for a 12-token (tiled) and a 5-token (vec_dot) prompt.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ggml_exact_checks import assert_bits_equal, golden_cases

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact.dots import TILED_MIN_TOKENS, mul_mat_q, mul_mat_tiled, mul_mat_vec_dot
from embedkit.kernels.cpu.ggml_exact.quantize import quantize_q8_K

DATA = Path(__file__).resolve().parent / "data" / "ggml_exact"
sys.path.insert(0, str(DATA))
from make_q5_k_goldens import quantize_q5_K_rough, random_q5_K  # noqa: E402

GOLDEN = np.load(DATA / "q5_k.npz")
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
Q5_K = int(GGMLType.Q5_K)
live = pytest.mark.skipif(not HAVE_LLAMA, reason="llama_cpp not installed (goldens above cover CI)")




@pytest.mark.parametrize("i", golden_cases(GOLDEN, "vec"))
def test_vec_dot_matches_golden(i: int) -> None:
    w, x = GOLDEN[f"vec/{i}/w"], GOLDEN[f"vec/{i}/x"]
    assert_bits_equal(mul_mat_vec_dot(w, Q5_K, quantize_q8_K(x), x.shape[1]), GOLDEN[f"vec/{i}/y"])


@pytest.mark.parametrize("i", golden_cases(GOLDEN, "graph"))
def test_mul_mat_matches_golden(i: int) -> None:
    w, x, want = GOLDEN[f"graph/{i}/w"], GOLDEN[f"graph/{i}/x"], GOLDEN[f"graph/{i}/y"]
    assert_bits_equal(mul_mat_q(w, Q5_K, x, x.shape[1]), want)
    if x.shape[0] >= TILED_MIN_TOKENS:
        assert_bits_equal(mul_mat_tiled(w, Q5_K, quantize_q8_K(x), x.shape[1]), want)


@pytest.fixture(scope="module")
def mk():
    """make_q5_k_goldens (the live oracles), imported only when llama_cpp is there."""
    import make_q5_k_goldens

    return make_q5_k_goldens


@live
@pytest.mark.parametrize(("n_out", "k", "n_tok"), [(64, 1024, 1), (40, 2048, 3), (33, 4096, 2), (24, 768, 7)])
def test_live_vec_dot(mk, n_out: int, k: int, n_tok: int) -> None:
    rng = np.random.default_rng(n_out * 7 + k + n_tok)
    w, x = random_q5_K(rng, n_out, k), mk.random_activations(rng, n_tok, k)
    xq = quantize_q8_K(x)
    assert np.array_equal(xq, mk.oracle_q8_K(x))
    assert_bits_equal(mul_mat_vec_dot(w, Q5_K, xq, k), mk.oracle_vec_dot(w, xq, k))


@live
@pytest.mark.parametrize(("n_out", "k", "n_tok"), [(96, 2048, 8), (64, 1024, 12), (30, 4096, 9), (48, 512, 33),
                                                   (40, 1536, 4)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_live_mul_mat(mk, n_out: int, k: int, n_tok: int, n_threads: int) -> None:
    rng = np.random.default_rng(n_out + k * 3 + n_tok)
    w, x = random_q5_K(rng, n_out, k), mk.random_activations(rng, n_tok, k)
    assert_bits_equal(mul_mat_q(w, Q5_K, x, k), mk.oracle_mul_mat(w, x, n_threads))


@live
def test_live_random_q5_K_model_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cpp import Llama

    import embedkit.testing.random_models as random_models
    from embedkit.backend.ggml_cpu import GGMLCPUBackend
    from embedkit.models import load_model

    quantize = random_models.kernels.quantize  # embedkit has no Q5_K quantizer; any valid Q5_K bytes will do
    monkeypatch.setattr(
        random_models.kernels, "quantize", lambda w, t: quantize_q5_K_rough(w) if t == Q5_K else quantize(w, t)
    )
    path = tmp_path / "q5_k.gguf"
    shape = dict(random_models.SHAPES["tiny"], n_embd=256, n_ff=512)  # every matrix width a multiple of 256
    random_models.write_random_model(path, "llama", shape, "Q5_K")
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    m = load_model(str(path))
    assert isinstance(m.placement.backends[0], GGMLCPUBackend)
    rng = np.random.default_rng(13)
    for n_tok in (12, 5):
        ids = [int(i) for i in rng.integers(1, shape["n_vocab"], n_tok)]
        got = np.asarray(m.forward(ids, m.new_state(32), 0, all_positions=True), np.float32)
        llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
        llm.eval(ids)
        assert_bits_equal(got, np.array(llm.scores[:n_tok], dtype=np.float32))
        llm.close()
