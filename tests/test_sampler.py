"""Sampler: llama.cpp's chain (penalties -> top-k -> top-p -> min-p -> temperature -> draw) on hand-made logits.

Expected distributions are written out by hand (exact to 1e-12) or, for 262k-entry random logits, come
from a naive sort-everything reference of llama.cpp's samplers (same kept ids, probabilities to 1e-9).
"""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.errors import GenerationError
from embedkit.generate.sampler import Sampler, SamplerParams, apply_penalties, token_distribution

OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temp": 1.0}
# probabilities 0.5, 0.3, 0.15, 0.05 as logits (shifted, so softmax must renormalise)
P4 = np.array([0.5, 0.3, 0.15, 0.05])
L4 = (np.log(P4) + 1.7).astype(np.float32)


def dist(logits, history=(), **kw):
    ids, probs = token_distribution(np.asarray(logits, dtype=np.float32), list(history), SamplerParams(**{**OFF, **kw}))
    return ids.tolist(), probs


def test_no_truncation_is_softmax():
    ids, probs = dist(L4)
    assert ids == [0, 1, 2, 3]
    np.testing.assert_allclose(probs, P4, rtol=1e-6)


def test_top_k():
    ids, probs = dist(L4, top_k=2)
    assert ids == [0, 1]
    np.testing.assert_allclose(probs, [0.625, 0.375], rtol=1e-6)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.5, [0]), (0.79, [0, 1]), (0.8 - 1e-6, [0, 1]), (0.81, [0, 1, 2]), (0.96, [0, 1, 2, 3]), (0.0, [0])],
)
def test_top_p_keeps_until_cumulative_reaches_p(top_p, kept):
    # llama.cpp keeps tokens up to and including the one where the cumulative probability reaches p
    ids, probs = dist(L4, top_p=top_p)
    assert ids == kept
    np.testing.assert_allclose(probs, P4[kept] / P4[kept].sum(), rtol=1e-6)


@pytest.mark.parametrize(("min_p", "kept"), [(0.05, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.35, [0, 1]), (0.7, [0])])
def test_min_p_relative_to_the_best(min_p, kept):
    ids, probs = dist(L4, min_p=min_p)
    assert ids == kept
    np.testing.assert_allclose(probs, P4[kept] / P4[kept].sum(), rtol=1e-6)


def test_temperature_comes_after_truncation():
    # top-p 0.8 is decided at temperature 1 (keeps 2 tokens), then temperature 0.5 squares the odds
    ids, probs = dist(L4, top_p=0.79, temp=0.5)
    assert ids == [0, 1]
    np.testing.assert_allclose(probs, [0.25 / 0.34, 0.09 / 0.34], rtol=1e-6)


def test_top_k_then_top_p_renormalises_over_survivors():
    # after top-k=3 the probabilities are 0.5/0.95, 0.3/0.95, ...: 0.8421 >= 0.82 at the second token
    ids, _ = dist(L4, top_k=3, top_p=0.82)
    assert ids == [0, 1]
    ids, _ = dist(L4, top_k=0, top_p=0.82)
    assert ids == [0, 1, 2]


def test_greedy_is_argmax_after_penalties():
    logits = np.array([1.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert Sampler(SamplerParams(temp=0.0))(logits) == 1
    # token 1 seen: 3.0 / 1.1 = 2.727 < 2.9
    assert Sampler(SamplerParams(temp=0.0, repeat_penalty=1.1))(logits, [1]) == 2
    assert dist(logits, temp=0.0)[0] == [1]


def test_penalties_by_hand():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    p = SamplerParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, repeat_last_n=64)
    work = logits.copy()
    apply_penalties(work, [0, 1, 1], p)
    # token 0: 2/2 - 1*0.5 - 0.25; token 1 (twice, negative): -1*2 - 2*0.5 - 0.25
    np.testing.assert_allclose(work, [0.25, -3.25, 0.5, 3.0], rtol=0, atol=1e-6)
    work = logits.copy()
    apply_penalties(work, [0, 1, 1], SamplerParams(repeat_penalty=2.0, repeat_last_n=2))
    np.testing.assert_allclose(work, [2.0, -2.0, 0.5, 3.0], rtol=0, atol=1e-6)  # window: last 2 only
    work = logits.copy()
    apply_penalties(work, [0, 1, 1], SamplerParams(repeat_penalty=2.0, repeat_last_n=0))
    np.testing.assert_array_equal(work, logits)  # 0 = off


def test_seeded_draws_follow_the_distribution_and_repeat():
    logits = L4
    p = SamplerParams(**{**OFF, "top_k": 3, "seed": 1234})
    s = Sampler(p)
    draws = np.array([s(logits) for _ in range(20000)])
    again = Sampler(p)
    assert [again(logits) for _ in range(200)] == draws[:200].tolist()
    other = Sampler(SamplerParams(**{**OFF, "top_k": 3, "seed": 99}))
    assert [other(logits) for _ in range(200)] != draws[:200].tolist()
    freq = np.bincount(draws, minlength=4) / len(draws)
    expect = np.array([0.5, 0.3, 0.15, 0.0]) / 0.95
    # 5 standard deviations of a binomial proportion with n=20000
    tol = 5 * np.sqrt(expect * (1 - expect) / len(draws)) + 1e-12
    assert np.all(np.abs(freq - expect) <= tol), (freq, expect)


def _reference(logits: np.ndarray, p: SamplerParams) -> tuple[list[int], np.ndarray]:
    """llama.cpp's samplers the slow way: sort everything, apply each in turn."""
    order = np.argsort(-logits, kind="stable")
    vals = logits[order].astype(np.float64)
    ids = order
    if 0 < p.top_k < len(ids):
        ids, vals = ids[: p.top_k], vals[: p.top_k]
    if p.top_p < 1.0:
        probs = np.exp(vals - vals[0]) / np.exp(vals - vals[0]).sum()
        cum = np.cumsum(probs)
        last = next((i + 1 for i in range(len(cum)) if cum[i] >= p.top_p), len(cum))
        ids, vals = ids[:last], vals[:last]
    if p.min_p > 0.0:
        keep = vals >= np.float32(vals[0] + np.log(p.min_p))
        ids, vals = ids[keep], vals[keep]
    e = np.exp((vals - vals[0]) / p.temp)
    return ids.tolist(), e / e.sum()


@pytest.mark.parametrize(
    "kw",
    [
        {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "temp": 0.8},
        {"top_k": 0, "top_p": 0.9, "min_p": 0.0, "temp": 1.0},  # top-p alone: the partial-sort path
        {"top_k": 0, "top_p": 0.999, "min_p": 0.0, "temp": 1.3},  # head too short: full sort
        {"top_k": 0, "top_p": 1.0, "min_p": 0.02, "temp": 0.7},
        {"top_k": 5000, "top_p": 0.5, "min_p": 0.01, "temp": 1.0},
    ],
)
def test_large_vocab_matches_naive_reference(kw):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(262_144) * 3.0).astype(np.float32)
    p = SamplerParams(**kw)
    ids, probs = token_distribution(logits, [], p)
    ref_ids, ref_probs = _reference(logits, p)
    assert ids.tolist() == ref_ids
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(
    "kw", [{"temp": float("nan")}, {"top_p": -0.1}, {"min_p": 1.5}, {"repeat_penalty": 0.0}, {"repeat_last_n": -2}]
)
def test_bad_params_are_clear_errors(kw):
    with pytest.raises(GenerationError):
        Sampler(SamplerParams(**kw))


@pytest.mark.parametrize("peak", [None, 40.0, 100.0])  # top-k candidates found by the cheap mask, or not
def test_top_k_ids_exact(peak):
    from embedkit.generate.sampler import top_k_ids

    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(262_144) * 3.0).astype(np.float32)
    if peak is not None:
        logits[rng.choice(262_144, 3, replace=False)] = [peak, peak - 1.0, peak - 2.5]  # no ties
    for k in (1, 40, 1000):
        ids = top_k_ids(logits, k)
        assert sorted(ids.tolist()) == sorted(np.argsort(-logits, kind="stable")[:k].tolist())


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (np.inf, "infinite")])
@pytest.mark.parametrize("params", [SamplerParams(temp=0.0), SamplerParams(seed=1), SamplerParams(seed=1, top_k=0)])
def test_non_finite_logits_are_a_clear_error(bad, what, params):
    """A model with damaged weights (NaN/inf in a tensor) made default sampling fail with 'internal error
    (ValueError: zero-size array to reduction operation maximum ...)' and greedy or unfiltered sampling
    print garbage."""
    logits = np.linspace(-1, 1, 50).astype(np.float32)
    logits[7] = bad
    with pytest.raises(GenerationError, match=f"the model produced {what} logits"):
        Sampler(params)(logits)
    with pytest.raises(GenerationError, match="only -infinity"):
        Sampler(params)(np.full(50, -np.inf, dtype=np.float32))
