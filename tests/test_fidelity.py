"""Fidelity of each CPU arithmetic to the model itself, on the three packaged models.

Reference: transformers' float64 forward of the GGUF's dequantized weights over tests/data/fidelity/prose.txt
(~490 tokens of English written for this test), teacher-forced, stored as each position's top-256
log-probabilities (tests/data/fidelity/make_goldens.py; KL on that support is explained in
embedkit/evaluate/fidelity.py). The default arithmetic (float32) must stay below a mean KL of 1e-6 with
top-1 agreement >= 99.9% as a prompt batch, and below 1e-6 with top-1 >= 99.5% one token per step (decode's
int16-activation kernels: one flip in Qwen2.5's 483 positions); the
compatibility arithmetic `ggml` (llama.cpp's 8-bit activation rounding) is reported, and only checked to stay
in its known range (measured 2026-12-07: benchmarks/RESULTS.md). benchmarks/bench_fidelity.py measures the same
over five texts (~2,500 positions a model), enough to see decode's flip rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedkit.backend import make_placement
from embedkit.evaluate.fidelity import kl_on_support, log_softmax64, measure_fidelity, model_logits, top_k_log_probs
from embedkit.models import load_model
from embedkit.testing.random_models import write_random_model

DATA = Path(__file__).resolve().parent / "data" / "fidelity"
MODELS = {"gemma_path": "gemma3-270m", "smollm_path": "smollm2-135m", "qwen_path": "qwen2.5-coder-0.5b"}


def test_kl_on_support_is_exact_when_the_rest_is_proportional() -> None:
    """With q a reweighting of p that is uniform outside the top-k, the support KL equals the full KL; with
    other q it is a lower bound (log-sum inequality)."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(5, 300)) * 3
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ids, top = top_k_log_probs(lp, 20)
    assert (ids[:, 0] == lp.argmax(axis=1)).all() and (np.diff(top, axis=1) <= 0).all()
    q = logits + rng.normal(scale=0.1, size=logits.shape)
    lq = q - np.log(np.exp(q).sum(axis=1, keepdims=True))
    full = (np.exp(lp) * (lp - lq)).sum(axis=1)
    support = kl_on_support(ids, top, lq)
    assert (support <= full + 1e-15).all() and (support > 0).all()
    # same logits outside the top-20 (up to a shift): the rest contributes exactly its bucket
    q2 = logits.copy()
    np.put_along_axis(q2, ids, np.take_along_axis(q, ids, axis=1), axis=1)
    lq2 = q2 - np.log(np.exp(q2).sum(axis=1, keepdims=True))
    assert np.allclose(kl_on_support(ids, top, lq2), (np.exp(lp) * (lp - lq2)).sum(axis=1), rtol=1e-9, atol=0)


def test_measure_fidelity_reports_each_flip(tmp_path: Path) -> None:
    """Against its own prompt logits a model agrees everywhere; a reference whose two best tokens are swapped at
    one position is a flip there, by our margin between them (benchmarks/bench_fidelity.py prints these)."""
    shape = dict(n_vocab=320, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64)
    model = load_model(write_random_model(tmp_path / "m.gguf", "llama", shape, "Q8_0", seed=5), make_placement("cpu"))
    ids = np.random.default_rng(3).integers(1, 320, size=20).astype(np.int32)
    lp = np.concatenate([log_softmax64(x) for x in model_logits(model, ids)])
    ref_ids, ref_lp = top_k_log_probs(lp, 8)
    same = measure_fidelity(model, ids, ref_ids, ref_lp)
    assert same.top1 == 1.0 and same.n == 20 and len(same.flips(ref_ids)) == 0 and (same.gap == 0).all()
    assert same.mean_kl < 1e-12 and same.kl.shape == (20,)
    ref_ids[7, [0, 1]] = ref_ids[7, [1, 0]]
    ref_lp[7, [0, 1]] = ref_lp[7, [1, 0]]
    swapped = measure_fidelity(model, ids, ref_ids, ref_lp)
    assert swapped.flips(ref_ids).tolist() == [7] and swapped.top1 == 19 / 20
    assert np.isclose(swapped.gap[7], lp[7].max() - lp[7, ref_ids[7, 0]], rtol=0, atol=1e-9)
    assert swapped.gap[7] > 0 and (np.delete(swapped.gap, 7) == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("fixture", list(MODELS))
def test_default_arithmetic_is_faithful(fixture: str, request: pytest.FixtureRequest) -> None:
    golden = np.load(DATA / f"{MODELS[fixture]}.npz")
    ids, ref_ids, ref_lp = golden["ids"], golden["top_ids"], golden["top_log_probs"]
    path = request.getfixturevalue(fixture)
    from embedkit.tokenizer import load_tokenizer

    text = (DATA / "prose.txt").read_text(encoding="utf-8")
    assert load_tokenizer(path).encode(text, add_special=True) == ids.tolist(), "tokenizer changed: rerun goldens"
    results = {}
    for math, decodes in (("float32", (False, True)), ("ggml", (False,))):
        model = load_model(path, make_placement("cpu", cpu_math=math))  # one load serves both paths
        for decode in decodes:
            res = results[math, decode] = measure_fidelity(model, ids, ref_ids, ref_lp, decode=decode)
            print(f"{MODELS[fixture]} {math} {'decode' if decode else 'prompt'}: mean KL {res.mean_kl:.3e}, "
                  f"top-1 {100 * res.top1:.2f}%")
    for decode in (False, True):  # prompt batches (float32 BLAS) and decode steps (int16 activations)
        default = results["float32", decode]
        assert default.mean_kl < 1e-6, default
        # decode's int16 activations flipped one top-1 of Qwen2.5's 483 (99.79%, mean KL 9.5e-9, 2026-12-07)
        assert default.top1 >= (0.995 if decode else 0.999), default
    ggml = results["ggml", False]
    assert 1e-4 < ggml.mean_kl < 3e-2 and ggml.top1 >= 0.9, ggml  # llama.cpp's rounding: measured ~1e-3..7e-3
