"""Decode steps whose best two logits are nearly tied are recomputed with float32 activations (the CPU's int16
decode kernels move logits by ~1e-3, enough to swap two tokens a hair apart): the recomputed step equals a
float32 forward, writes the same cache cells, and the compatibility arithmetic never recomputes."""

from __future__ import annotations

import numpy as np
import pytest

import embedkit.models.decoder as decoder
from embedkit.backend import make_placement
from embedkit.models import load_model
from embedkit.models.batch import SeqBatch
from embedkit.models.decoder import has_near_tie
from embedkit.testing.random_models import write_random_model

SHAPE = dict(n_vocab=320, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("tie") / "llama.gguf", "llama", SHAPE, "Q4_K", seed=23)


def test_has_near_tie_looks_at_the_top_two_of_each_row() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    logits[:, 7] = 10.0
    logits[:, 9] = 9.0
    assert not has_near_tie(logits, 1e-3)
    logits[2, 9] = 10.0 - 5e-4
    assert has_near_tie(logits, 1e-3)
    assert not has_near_tie(logits[:2], 1e-3)
    logits[1, 3] = 11.0  # a clear winner elsewhere: the 10.0 pair is no longer the top
    assert not has_near_tie(logits[:2], 1e-3)


def _decode(model, ids: np.ndarray) -> np.ndarray:
    state = model.new_state(32)
    return np.concatenate([model.forward(ids[i : i + 1], state, i) for i in range(len(ids))])


def test_a_recomputed_step_equals_the_float32_forward(model_path, monkeypatch) -> None:
    model = load_model(model_path, make_placement("cpu", cpu_math="float32"))
    ids = np.random.default_rng(8).integers(0, SHAPE["n_vocab"], 12).astype(np.int32)
    rounded = _decode(model, ids)
    with model.placement.exact_decode():
        exact = _decode(model, ids)
    assert np.abs(rounded - exact).max() > 1e-6  # the int16 kernels do round (else this test shows nothing)
    monkeypatch.setattr(decoder, "NEAR_TIE_LOGITS", np.inf)  # every step counts as a near tie
    recomputed = _decode(model, ids)
    np.testing.assert_array_equal(recomputed, exact)  # the rerun wrote the same cache cells as a float32 run


def test_the_rerun_leaves_the_cache_as_a_float32_step_would(model_path, monkeypatch) -> None:
    """A step run rounded and then again exact (what a near tie does) leaves the next step's logits equal to
    those of a float32 history."""
    model = load_model(model_path, make_placement("cpu", cpu_math="float32"))
    ids = np.random.default_rng(9).integers(0, SHAPE["n_vocab"], 6).astype(np.int32)
    state = model.new_state(16)
    with model.placement.exact_decode():
        for i in range(5):
            model._forward(ids[i : i + 1], state, SeqBatch.single(i, 1), None, "logits")
            model._forward(ids[i : i + 1], state, SeqBatch.single(i, 1), None, "logits")
        after_rerun = model._forward(ids[5:6], state, SeqBatch.single(5, 1), None, "logits")
    fresh = model.new_state(16)
    with model.placement.exact_decode():
        for i in range(6):
            last = model._forward(ids[i : i + 1], fresh, SeqBatch.single(i, 1), None, "logits")
    np.testing.assert_array_equal(after_rerun, last)


def test_llama_cpp_arithmetic_is_never_recomputed(model_path) -> None:
    model = load_model(model_path, make_placement("cpu", cpu_math="ggml"))
    assert not model.placement.rounds_decode(1)
    float_model = load_model(model_path, make_placement("cpu", cpu_math="float32"))
    assert float_model.placement.rounds_decode(1) and not float_model.placement.rounds_decode(64)
