"""Continuous batching on real models (CPU): 8 prompts of different lengths, admitted at different steps, two
stopping early on a stop string, each sequence's greedy tokens and text equal to its solo run."""

from __future__ import annotations

import pytest
from batch_reference import Case, batched_run, max_rel_error, solo_run, with_stop_from_solo

from embedkit.generate import BatchGenerator, Generator

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Hi",
    "Once upon a time, in a small village at the edge of a dark forest, there lived",
    "List three colours:",
    "The quick brown fox",
    "Water boils at a temperature of",
    "In 1969, the first humans",
]
TOLERANCE = {"float32": 1e-3, "ggml": 1e-2}


@pytest.mark.slow
@pytest.mark.parametrize("math_mode", list(TOLERANCE))
@pytest.mark.parametrize("model_fixture", ["smollm_path", "gemma_path"])
def test_eight_prompts_match_solo_runs(request, monkeypatch, model_fixture, math_mode):
    if model_fixture == "gemma_path" and math_mode == "ggml":
        # Known open problem (issue 19): Gemma 3 batched under llama.cpp's rounding drifts from its solo runs
        # (logits 0.035 relative in one run, a different greedy token in another); float32 matches.
        request.node.add_marker(pytest.mark.xfail(reason="Gemma 3 batched with --cpu-math ggml differs from solo"))
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", math_mode)
    gen = Generator(request.getfixturevalue(model_fixture), n_ctx=96)
    budgets = (4, 6, 3, 3, 6, 4, 2, 4)
    starts = (0, 0, 1, 2, 3, 3, 5, 8)
    cases = [Case(gen.tokenize(p), b, (), s) for p, b, s in zip(PROMPTS, budgets, starts, strict=True)]
    cases[1] = with_stop_from_solo(gen, cases[1])
    cases[4] = with_stop_from_solo(gen, cases[4])
    solos = [solo_run(gen, c) for c in cases]
    bgen = BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=4 * 96, n_parallel=4, n_batch=16,
                                     background=False)  # fmt: skip
    results = batched_run(bgen, cases)
    for i, (r, s) in enumerate(zip(results, solos, strict=True)):
        assert r.tokens == s.tokens, (i, r.tokens, s.tokens)
        assert (r.text, r.finish_reason) == (s.text, s.finish_reason), i
    worst = max(max_rel_error(r.logits, s.logits) for r, s in zip(results, solos, strict=True))
    assert worst < TOLERANCE[math_mode]
