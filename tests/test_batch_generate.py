"""Continuous batching on the CPU with random-weight models: several sequences in one forward give each
sequence what it gets alone (tokens identical, logits within float32 rounding), the scheduler admits,
finishes, cancels and streams, and `generate --batch` reads and writes JSON lines."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from batch_reference import GREEDY, Case, batched_run, max_rel_error, solo_run, with_stop_from_solo

from embedkit.cli.main import main
from embedkit.errors import GenerationError
from embedkit.generate import BatchGenerator, Generator, TokenEvent
from embedkit.models import load_model
from embedkit.models.batch import SeqBatch
from embedkit.testing.random_models import write_random_model

SHAPE = dict(n_vocab=320, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=256, sliding_window=7)
# float32: a decode row alone runs the int16-activation matvec, inside a batch the dequantized-tile GEMM
FLOAT32_TOLERANCE = 1e-3
EXACT_TOLERANCE = 1e-2  # llama.cpp's arithmetic: ggml's kernel choice depends on the number of rows
MATHS = {"float32": FLOAT32_TOLERANCE, "ggml": EXACT_TOLERANCE}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("batch-models")
    files = {}
    for arch in ("llama", "gemma3", "falcon"):
        s = dict(SHAPE, head_dim=32) if arch == "gemma3" else SHAPE
        files[arch] = write_random_model(d / f"{arch}.gguf", arch, s, "Q8_0", seed=11)
    return files


def _cases() -> list[Case]:
    """8 prompts of different lengths (1 to 40 tokens), budgets and admission steps."""
    rng = np.random.default_rng(19)
    lengths = (3, 17, 1, 9, 40, 5, 12, 2)
    budgets = (6, 10, 3, 8, 2, 12, 7, 9)
    starts = (0, 0, 1, 2, 2, 4, 7, 9)
    return [Case(rng.integers(3, 320, n).tolist(), b, (), s) for n, b, s in zip(lengths, budgets, starts, strict=True)]


@pytest.mark.parametrize("math_mode", list(MATHS))
@pytest.mark.parametrize("arch", ["llama", "gemma3", "falcon"])
def test_forward_batch_matches_solo_forwards(model_files, monkeypatch, arch, math_mode):
    """Rows of three sequences at different positions (a prompt chunk of each, then decode rows in another
    order) give each sequence's solo logits; Gemma 3's sliding window (7) is crossed per sequence."""
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", math_mode)
    m = load_model(model_files[arch])
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 320, n).astype(np.int32) for n in (6, 11, 3)]
    solo = [m.forward(p, m.new_state(32), 0, all_positions=True) for p in prompts]
    state = m.new_slot_state(32, 4)
    first = m.forward_batch(
        np.concatenate([prompts[0][:4], prompts[1][:10], prompts[2][:2]]),
        state,
        SeqBatch.of([(2, 0, 4), (0, 0, 10), (3, 0, 2)]),
    )
    second = m.forward_batch(
        np.asarray([prompts[2][2], prompts[1][10], prompts[0][4], prompts[0][5]], dtype=np.int32),
        state,
        SeqBatch.of([(3, 2, 1), (0, 10, 1), (2, 4, 2)]),
        out_rows=[3, 1, 0],
    )
    tol = MATHS[math_mode]
    scale = max(np.abs(s).max() for s in solo)
    for got, want in [
        (first[:4], solo[0][:4]), (first[4:14], solo[1][:10]), (first[14:16], solo[2][:2]),
        (second[0], solo[0][5]), (second[1], solo[1][10]), (second[2], solo[2][2]),
    ]:  # fmt: skip
        assert np.abs(got - want).max() / scale < tol


@pytest.mark.parametrize("math_mode", list(MATHS))
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_eight_sequences_match_their_solo_runs(model_files, monkeypatch, arch, math_mode):
    """8 prompts admitted at different steps into 3 slots, prompt chunks of at most 8 tokens mixed with decode
    rows, two stopping early on a stop string: every sequence's greedy tokens, text and stop reason are
    its solo run's, its logits within float32 rounding."""
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", math_mode)
    path = model_files[arch]
    gen = Generator(path, n_ctx=64)
    cases = _cases()
    cases[1] = with_stop_from_solo(gen, cases[1])
    cases[5] = with_stop_from_solo(gen, cases[5])
    assert cases[1].stop and cases[5].stop
    solos = [solo_run(gen, c) for c in cases]
    bgen = BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=3 * 64, n_parallel=3, n_batch=8,
                                     background=False)  # fmt: skip
    results = batched_run(bgen, cases)
    assert sum(s.finish_reason == "stop" for s in solos) == 2
    for i, (r, s) in enumerate(zip(results, solos, strict=True)):
        assert r.tokens == s.tokens, i
        assert (r.text, r.finish_reason) == (s.text, s.finish_reason), i
        assert max_rel_error(r.logits, s.logits) < MATHS[math_mode], i
    assert bgen.steps < sum(len(c.prompt) + c.n_predict for c in cases)  # rows really shared forwards


def test_handle_streams_events_and_cancel_keeps_what_was_made(model_files):
    bgen = BatchGenerator(model_files["llama"], n_ctx=128, n_parallel=2, background=False)
    h = bgen.submit([5, 6, 7, 8], n_predict=6, sampler=GREEDY, ignore_eos=True)
    events = list(h)
    assert all(isinstance(e, TokenEvent) for e in events)
    r = h.result()
    assert [e.token for e in events if e.token is not None] == r.tokens and len(r.tokens) == 6
    assert "".join(e.text for e in events) == r.text
    assert r.finish_reason == "length" and r.timings.gen_tokens == 6
    # cancel one of two running sequences midway: it ends "cancelled", the other is unaffected
    a = bgen.submit([9, 10, 11], n_predict=50, sampler=GREEDY, ignore_eos=True)
    b = bgen.submit([12, 13], n_predict=5, sampler=GREEDY, ignore_eos=True)
    for _ in range(3):
        bgen.step()
    a.cancel()
    ra, rb = a.result(), b.result()
    assert ra.finish_reason == "cancelled" and 0 < len(ra.tokens) < 50
    alone = BatchGenerator(model_files["llama"], n_ctx=64, n_parallel=1, background=False)
    assert rb.tokens == alone.submit([12, 13], n_predict=5, sampler=GREEDY, ignore_eos=True).result().tokens
    with pytest.raises(GenerationError, match="only once"):
        list(h)


def test_listener_pushes_events_then_result_and_on_step_counts_sequences(model_files):
    """A listener sees the handle's events in order and then the final SequenceResult; `on_step` reports each
    forward's sequences (2 when both decode together); n_running / n_waiting follow admission."""
    bgen = BatchGenerator(model_files["llama"], n_ctx=128, n_parallel=2, background=False)
    pushed: dict[str, list] = {"a": [], "b": [], "c": []}
    steps: list[tuple[int, int]] = []
    bgen.on_step = lambda rows, seqs: steps.append((rows, seqs))
    handles = {k: bgen.submit([5 + i, 6, 7], n_predict=4 + i, sampler=GREEDY, ignore_eos=True,
                              listener=pushed[k].append) for i, k in enumerate(pushed)}
    assert (bgen.n_running, bgen.n_waiting) == (0, 3)
    bgen.step()
    assert (bgen.n_running, bgen.n_waiting) == (2, 1)
    bgen.run()
    assert (bgen.n_running, bgen.n_waiting) == (0, 0)
    for k, h in handles.items():
        *events, end = pushed[k]
        assert events == list(h) and end == h.result() and end.finish_reason == "length"
    assert max(seqs for _, seqs in steps) == 2 and len(steps) == bgen.steps


def test_scheduler_thread_serves_concurrent_submitters(model_files):
    """submit() from 6 threads at once into 4 slots; every result equals the prompt's solo tokens."""
    gen = Generator(model_files["gemma3"], n_ctx=64)
    prompts = [[3 + i, 40 + 2 * i, 7, 90 - i][: 1 + i % 4] for i in range(6)]
    want = []
    for p in prompts:
        gen.reset()
        want.append(gen.generate(p, n_predict=5, sampler=GREEDY, ignore_eos=True).tokens)
    got: dict[int, list[int]] = {}
    with BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=4 * 64, n_parallel=4) as bgen:

        def worker(i: int) -> None:
            h = bgen.submit(prompts[i], n_predict=5, sampler=GREEDY, ignore_eos=True)
            got[i] = [e.token for e in h if e.token is not None]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [got[i] for i in range(6)] == want


def test_context_full_and_bad_prompts(model_files):
    bgen = BatchGenerator(model_files["llama"], n_ctx=16, n_parallel=2, background=False)
    assert bgen.n_ctx_slot == 8
    r = bgen.submit([1, 2, 3], n_predict=-1, sampler=GREEDY, ignore_eos=True).result()
    assert r.finish_reason == "context" and len(r.tokens) == 6  # 3 + 5 fed = 8 positions, one more sampled
    with pytest.raises(GenerationError, match="the prompt has 9 tokens but a slot holds 8"):
        bgen.submit(list(range(1, 10)))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        bgen.submit([1, 999])
    with pytest.raises(GenerationError, match="empty"):
        bgen.submit([])
    assert bgen.submit([1], n_predict=0).result().finish_reason == "length"
    bgen.close()
    with pytest.raises(GenerationError, match="closed"):
        bgen.submit([1])


def test_cli_batch_writes_results_in_input_order(model_files, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "hello there", "id": "first"},
        {"prompt": "abc", "n": 2},
        None,  # a blank line is skipped but counted
        {"prompt": "a longer prompt with several words", "temp": 0.7, "seed": 3, "stop": ["zz"]},
    ]
    src.write_text("\n".join("" if x is None else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(model_files["llama"]), "--batch", str(src), "--parallel", "2", "-n", "4",
              "--temp", "0", "--ignore-eos", "-q"])  # fmt: skip
    assert e.value.code == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["id"] for o in out] == ["first", 2, 4]
    assert [len(o["tokens"]) for o in out] == [4, 2, 4]
    assert all(set(o) == {"id", "text", "tokens", "finish_reason"} for o in out)
    gen = Generator(model_files["llama"], n_ctx=64)
    assert out[0]["tokens"] == gen.generate("hello there", n_predict=4, sampler=GREEDY, ignore_eos=True).tokens


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a"}\n{"prompt": 3}\n', "error: line 2: field 'prompt': expected a non-empty string, got 3"),
        ('{"prompt": "a", "n": -2}\n', "error: line 1: field 'n': expected an integer >= -1, got -2"),
        ('{"prompt": "a", "temp": "hot"}\n', "error: line 1: field 'temp': expected a number, got \"hot\""),
        ('{"prompt": "a", "top_p": -1}\n', "error: line 1: field 'top_p': top-p must be >= 0, got -1"),
        ('{"prompt": "a", "stop": [1]}\n', "error: line 1: field 'stop': expected a string or a list of strings"),
        ('{"prompt": "a", "colour": 1}\n', "error: line 1: unknown field 'colour'"),
        ('\n{"id": 1}\n', "error: line 2: field 'prompt' is missing"),
        ('{"prompt": "a"\n', "error: line 1: not valid JSON"),
        ("[1]\n", "error: line 1: expected a JSON object, got list"),
    ],
)
def test_cli_batch_bad_line_is_one_line_error(model_files, tmp_path, capsys, content, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(model_files["llama"]), "--batch", str(src)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith(message) and err.count("\n") == 1, err


def test_reused_prefix_skips_cached_prompt_tokens_and_keeps_the_tokens(model_files):
    """With reuse_prefixes, a prompt that starts with what a free slot's cache holds (the previous prompt and
    its fed completion) processes only the rest and generates what it generates alone; a repeated prompt runs
    just its last token; reuse_prefix=False and a different prompt process everything."""
    gen = Generator(model_files["llama"], n_ctx=64)
    first = [5, 6, 7, 8, 9, 10]
    bgen = BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=2 * 64, n_parallel=2,
                                     background=False, reuse_prefixes=True)
    r1 = bgen.submit(first, n_predict=4, sampler=GREEDY, ignore_eos=True).result()
    assert r1.timings.prompt_tokens == len(first)
    turn2 = first + r1.tokens[:3] + [11, 12]  # the fed part of the completion (the last token was not fed)
    r2 = bgen.submit(turn2, n_predict=5, sampler=GREEDY, ignore_eos=True).result()
    assert r2.timings.prompt_tokens == 2
    gen.reset()
    assert r2.tokens == gen.generate(turn2, n_predict=5, sampler=GREEDY, ignore_eos=True).tokens
    r3 = bgen.submit(turn2, n_predict=5, sampler=GREEDY, ignore_eos=True).result()
    assert r3.timings.prompt_tokens == 1 and r3.tokens == r2.tokens
    r4 = bgen.submit(turn2, n_predict=5, sampler=GREEDY, ignore_eos=True, reuse_prefix=False).result()
    assert r4.timings.prompt_tokens == len(turn2) and r4.tokens == r2.tokens
    r5 = bgen.submit([40, 41, 42], n_predict=2, sampler=GREEDY, ignore_eos=True).result()
    assert r5.timings.prompt_tokens == 3
