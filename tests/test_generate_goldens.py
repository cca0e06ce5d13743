"""Greedy generation on the real models vs llama.cpp (goldens: tests/data/generate/greedy_*.json, see README).

Acceptance (issue 8): for each model, the first 32 greedy tokens equal llama.cpp's on at least 8 of the 10
prompts (llama.cpp's defaults; README.md). These tests select the compatibility arithmetic `--cpu-math ggml`
(embedkit/backend/ggml_cpu.py: llama.cpp's own, bit for bit), so we require all 10. The prompts are fed as
llama.cpp's token ids (our tokenizer is checked against the same ids separately), with end-of-generation
ignored as the goldens were made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.backend import make_placement
from embedkit.generate import Generator, SamplerParams

DATA = Path(__file__).resolve().parent / "data" / "generate"
MODELS = {"gemma_path": "gemma3-270m", "smollm_path": "smollm2-135m", "qwen_path": "qwen2.5-coder-0.5b"}
MIN_MATCHING = 10  # the issue asks for 8; bit-identical arithmetic gives every prompt
NEAR_TIE = 0.5  # logits; the same bound as tests/test_models_real.py


@pytest.fixture(scope="module", params=list(MODELS))
def loaded(request):
    golden = json.loads((DATA / f"greedy_{MODELS[request.param]}.json").read_text())
    gen = Generator(request.getfixturevalue(request.param), n_ctx=128, n_batch=64,
                    placement=make_placement("cpu", cpu_math="ggml"))
    return gen, golden


@pytest.fixture(scope="module")
def greedy_runs(loaded):
    """Our greedy continuation of every golden prompt, computed once per model."""
    gen, golden = loaded
    runs = []
    for case in golden["cases"]:
        # each golden starts from an empty context: without the reset the generator would reuse the previous
        # prompt's cached prefix (BOS) and run the rest as a smaller batch, which llama.cpp's kernels sum in
        # another order (as llama.cpp's own prompt cache would)
        gen.reset()
        runs.append(gen.generate(case["prompt_ids"], n_predict=golden["n_gen"], sampler=SamplerParams(temp=0.0),
                                 ignore_eos=True).tokens)
    return golden, runs


def _first_difference(ours: list[int], theirs: list[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)


@pytest.mark.slow
def test_greedy_matches_llama_cpp(greedy_runs):
    golden, runs = greedy_runs
    report, matching = [], 0
    for case, tokens in zip(golden["cases"], runs, strict=True):
        first = _first_difference(tokens, case["output_ids"])
        matching += first is None
        if first is not None:
            report.append(f"{case['prompt'][:30]!r}: first difference at token {first} "
                          f"(llama.cpp top-2 margin there {case['top2_margins'][first]})")
    assert matching >= MIN_MATCHING, f"{golden['model']}: {matching}/10 match; " + "; ".join(report)


@pytest.mark.slow
def test_greedy_diverges_only_where_llama_cpp_is_near_a_tie(greedy_runs):
    """Where our greedy text leaves llama.cpp's, llama.cpp's own top two logits were within NEAR_TIE:
    the two engines never disagree on a clear choice."""
    golden, runs = greedy_runs
    for case, tokens in zip(golden["cases"], runs, strict=True):
        first = _first_difference(tokens, case["output_ids"])
        if first is not None:
            margin = case["top2_margins"][first]
            assert margin < NEAR_TIE, (
                f"{golden['model']} {case['prompt'][:30]!r}: token {first} differs although llama.cpp's "
                f"top-2 margin there is {margin}"
            )


@pytest.mark.slow
def test_greedy_agrees_with_llama_cpp_at_least_as_often_as_llama_cpp_with_itself(greedy_runs):
    """The noise floor under the acceptance above: llama.cpp rerun with only its KV cache in F32 instead of F16
    (`output_ids_kv_f32`) repeats its own 32 greedy tokens on 5/10 (Gemma 3), 1/10 (SmolLM2) and 9/10 (Qwen2.5)
    prompts, and its mean matching prefix is 22.6 / 10.3 / 29.2 tokens. We must match llama.cpp's default run
    at least that well on both counts (tests/data/models/README.md explains the floor)."""
    golden, runs = greedy_runs

    def prefix(ours: list[int], theirs: list[int]) -> int:
        first = _first_difference(ours, theirs)
        return len(theirs) if first is None else first

    cases = golden["cases"]
    ours = [prefix(tokens, case["output_ids"]) for case, tokens in zip(cases, runs, strict=True)]
    itself = [prefix(case["output_ids_kv_f32"], case["output_ids"]) for case in cases]
    n = golden["n_gen"]
    assert sum(p == n for p in ours) >= sum(p == n for p in itself), (golden["model"], ours, itself)
    assert sum(ours) >= sum(itself), (golden["model"], ours, itself)


@pytest.mark.slow
def test_prompt_tokens_match_llama_cpp(loaded):
    gen, golden = loaded
    for case in golden["cases"]:
        assert gen.tokenize(case["prompt"]) == case["prompt_ids"], case["prompt"]


@pytest.mark.slow
def test_cli_generate_json_greedy(gemma_path):
    """End to end through the CLI: raw prompt text, BOS as the model asks, greedy, --json."""
    from click.testing import CliRunner

    from embedkit.cli.main import cli

    # the planets prompt: no near-tie in llama.cpp's first 8 tokens (smallest top-2 margin 0.12)
    case = json.loads((DATA / "greedy_gemma3-270m.json").read_text())["cases"][2]
    r = CliRunner().invoke(
        cli, ["generate", "-m", str(gemma_path), "-p", case["prompt"], "-n", "8", "--temp", "0", "-c", "64",
              "--ignore-eos", "--json", "--cpu-math", "ggml"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["tokens"] == case["output_ids"][:8]
    assert body["timings"]["prompt_tokens"] == len(case["prompt_ids"]) and body["timings"]["gen_tokens"] == 8
