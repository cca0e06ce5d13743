"""The generation loop and CLI plumbing, on a tiny stand-in model (the real models are in test_generate_goldens.py).

The stand-in's next token is always (last token + 1) over a character vocabulary, so every expected output
is known exactly; it records each forward call so batching, positions and cache reuse can be checked.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.errors import GenerationError
from embedkit.generate import Generator, SamplerParams, StopStrings
from embedkit.generate.stops import StopReason

CHARS = "abcdefghijklmnopqrstuvwxyz .!"
BOS, EOS, OFFSET = 0, 1, 2  # ids 2.. are CHARS
N_VOCAB = OFFSET + len(CHARS)
GREEDY = SamplerParams(temp=0.0)


class CharTokenizer:
    """One token per character; BOS added; EOS is end-of-generation."""

    bos_id, eos_id, add_bos, vocab_size = BOS, EOS, True, N_VOCAB

    def encode(self, text, add_special=True, parse_special=False):
        return ([BOS] if add_special else []) + [OFFSET + CHARS.index(c) for c in text]

    def is_eog(self, tid):
        return tid == EOS

    def incremental_decoder(self):
        return SimpleNamespace(feed=lambda t: CHARS[t - OFFSET] if t >= OFFSET else "", flush=lambda: "")


class SuccessorModel:
    """Logits favour (last id + 1) mod N_VOCAB; random noise below that margin (fresh each call)."""

    def __init__(self):
        self.params = SimpleNamespace(n_vocab=N_VOCAB, n_ctx_train=64)
        self.calls = []
        self._rng = np.random.default_rng(0)

    def new_state(self, n_ctx):
        return SimpleNamespace(n_ctx=n_ctx)

    def forward(self, ids, state, pos0, output="logits", all_positions=False):
        assert ids.dtype == np.int32
        if pos0 + len(ids) > state.n_ctx:
            raise AssertionError("the loop must not run past the context")
        self.calls.append((ids.tolist(), pos0, output))
        if output == "hidden":
            return self._rng.standard_normal((1, 8)).astype(np.float32)
        logits = self._rng.uniform(-1, 1, (1, N_VOCAB)).astype(np.float32)
        logits[0, (int(ids[-1]) + 1) % N_VOCAB] = 10.0
        return logits


def make(n_ctx=64, n_batch=512):
    model = SuccessorModel()
    return Generator.from_parts(None, model, CharTokenizer(), n_ctx=n_ctx, n_batch=n_batch), model


def test_greedy_run_streams_and_counts():
    gen, model = make()
    run = gen.start("abc", n_predict=5, sampler=GREEDY)
    pieces = list(run)
    res = run.result
    assert "".join(pieces) == res.text == "defgh"
    assert res.tokens == [OFFSET + CHARS.index(c) for c in "defgh"]
    assert res.stop_reason == StopReason.LENGTH
    assert res.timings.prompt_tokens == 4 and res.timings.gen_tokens == 5
    assert res.timings.prompt_ms >= 0 and res.timings.gen_ms >= 0
    # prompt in one batch at 0, then one token per step at increasing positions; the 5th is not run
    assert model.calls[0] == ([BOS, 2, 3, 4], 0, "logits")
    assert [c[1] for c in model.calls[1:]] == [4, 5, 6, 7]


def test_prompt_in_batches_only_last_batch_makes_logits():
    gen, model = make(n_batch=3)
    gen.generate("abcdefg", n_predict=1, sampler=GREEDY)
    assert [(len(ids), pos, out) for ids, pos, out in model.calls] == [
        (3, 0, "hidden"),
        (3, 3, "hidden"),
        (2, 6, "logits"),
    ]


def test_end_of_generation_and_ignore_eos():
    gen, _ = make()
    # '!' is the last char: its successor wraps to BOS (0) then EOS (1)... use the id just before EOS
    res = gen.generate([BOS], n_predict=10, sampler=GREEDY)  # BOS -> EOS at once
    assert res.tokens == [] and res.text == "" and res.stop_reason == StopReason.EOG
    res = gen.generate([BOS], n_predict=3, sampler=GREEDY, ignore_eos=True)
    assert res.tokens == [EOS, 2, 3] and res.text == "ab"


def test_stop_strings_cut_the_text():
    gen, _ = make()
    run = gen.start("a", n_predict=20, sampler=GREEDY, stop=["efg", "zzz"])
    pieces = list(run)
    assert "".join(pieces) == run.result.text == "bcd"
    assert run.result.stop_reason == StopReason.STOP_STRING
    assert run.result.tokens[-1] == OFFSET + CHARS.index("g")


def test_context_limits_are_clear_errors():
    gen, _ = make(n_ctx=8)
    with pytest.raises(GenerationError, match="prompt has 10 tokens but the context holds 8"):
        gen.start("abcdefghi")
    with pytest.raises(GenerationError, match="context full"):
        gen.generate("abc", n_predict=20, sampler=GREEDY)
    # exactly filling the context is fine: 4 prompt + 5 generated (the last is never run)
    res = gen.generate("abc", n_predict=5, sampler=GREEDY)
    assert res.text == "defgh"
    # no budget (-n -1): stop cleanly when the context is full
    res = gen.generate("abc", n_predict=-1, sampler=GREEDY)
    assert res.text == "defgh" and res.stop_reason == StopReason.CONTEXT


def test_cached_prefix_is_reused():
    gen, model = make()
    gen.generate("abc", n_predict=3, sampler=GREEDY)  # cache: BOS a b c d e
    model.calls.clear()
    res = gen.generate("abcdex", n_predict=1, sampler=GREEDY)
    assert res.timings.prompt_tokens == 1  # only 'x' is new
    assert model.calls == [([OFFSET + CHARS.index("x")], 6, "logits")]
    model.calls.clear()
    res = gen.generate("abq", n_predict=1, sampler=GREEDY)  # diverges after 'b'
    assert model.calls == [([OFFSET + CHARS.index("q")], 3, "logits")]
    model.calls.clear()
    gen.generate("abq", n_predict=1, sampler=GREEDY)  # all cached: the last token runs again for logits
    assert model.calls == [([OFFSET + CHARS.index("q")], 3, "logits")]


def test_interrupted_run_keeps_cache_consistent():
    gen, model = make()
    run = gen.start("ab", n_predict=10, sampler=GREEDY)
    it = iter(run)
    assert next(it) + next(it) == "cd"
    it.close()  # abandoned, as after Ctrl-C
    assert gen.cached == [BOS, 2, 3, 4]  # 'c' was run, 'd' was sampled but not run
    assert run.text == "cd"


def test_seeded_sampling_is_reproducible():
    outs = []
    for _ in range(2):
        gen, _ = make()
        outs.append(gen.generate("abc", n_predict=8, sampler=SamplerParams(temp=5.0, top_k=0, seed=3)).tokens)
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    ("pieces", "stops", "shown"),
    [
        (["he", "llo", " wor", "ld"], ["wor"], ["he", "llo", " ", ""]),
        (["ab", "c"], ["abd"], ["", "abc"]),
        (["x<", "|e", "nd|>tail"], ["<|end|>"], ["x", "", ""]),
        (["plain"], [], ["plain"]),
    ],
)
def test_stop_strings_hold_back_possible_prefixes(pieces, stops, shown):
    s = StopStrings(stops)
    assert [s.feed(p) for p in pieces] == shown


# -- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_cli(monkeypatch):
    import embedkit.cli.generate as cli_generate

    made = {}

    def load(kw):
        gen, model = make(n_ctx=kw["ctx_size"] or 64, n_batch=kw["batch_size"])
        gen.load_ms = 12.5
        made["gen"] = gen
        return gen

    monkeypatch.setattr(cli_generate, "load_generator", load)
    return made


def run_cli(args, input=None):
    from embedkit.cli.main import cli

    return CliRunner().invoke(cli, args, input=input, catch_exceptions=False)


def test_cli_generate_stdout_is_only_the_text(fake_cli):
    r = run_cli(["generate", "-p", "abc", "-n", "4", "--temp", "0"])
    assert r.exit_code == 0
    assert r.stdout == "defg"
    assert "eval time" in r.stderr and "load time" in r.stderr
    r = run_cli(["generate", "-p", "abc", "-n", "4", "--temp", "0", "--echo", "-q"])
    assert r.stdout == "abcdefg" and r.stderr == ""


def test_cli_generate_json_and_file(fake_cli, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("xy", encoding="utf-8")
    r = run_cli(["generate", "-f", str(prompt), "-n", "3", "--temp", "0", "--json"])
    body = json.loads(r.stdout)
    assert body["text"] == "z ." and len(body["tokens"]) == 3
    assert set(body["timings"]) == {"load_ms", "prompt_tokens", "prompt_ms", "gen_tokens", "gen_ms"}
    assert body["timings"]["prompt_tokens"] == 3 and body["timings"]["gen_tokens"] == 3
    assert body["timings"]["load_ms"] == 12.5


def test_cli_generate_errors_are_one_line(fake_cli, tmp_path, capsys):
    from embedkit.cli.main import main

    for args, msg in [
        (["generate", "-n", "3"], "no prompt"),
        (["generate", "-p", "a", "-f", str(tmp_path / "x")], "not both"),
        (["generate", "-f", str(tmp_path / "missing.txt")], "missing.txt: cannot read"),
        (["generate", "-p", "abcdefghijkl", "-c", "8"], "context holds 8"),
        (["generate", "-p", "abc", "-c", "8", "-n", "20", "--temp", "0"], "context full"),
        (["generate", "-p", "a", "--top-p", "-1"], "top-p"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err, (args, err)


def test_cli_chat_keeps_history_and_exits_on_eof(monkeypatch):
    import embedkit.cli.generate as cli_generate
    from embedkit.generate.chat_template import ChatTemplate

    made = {}

    def load(kw):
        gen, model = make(n_ctx=64)
        # chat_template is a cached_property: preset it with a template of plain characters
        gen.__dict__["chat_template"] = ChatTemplate("{% for m in messages %}{{ m.content }} {% endfor %}")
        made["gen"], made["model"] = gen, model
        return gen

    monkeypatch.setattr(cli_generate, "load_generator", load)
    r = run_cli(["chat", "-n", "3", "--temp", "0"], input="ab\n\ncd\n")
    assert r.exit_code == 0
    # each reply: successor of ' ' is '.', then '!', then BOS (no text); the blank line asks again
    assert r.stdout == "> .!\n> > .!\n> \n"
    # turn 2 renders "ab .! cd ": the first turn is reused from the cache, only " cd " is new
    first_call_of_turn2 = [c for c in made["model"].calls if c[1] > 0 and len(c[0]) > 1][-1]
    assert made["gen"].cached[:8] == made["gen"].tokenize("ab .! cd")[:8]
    assert first_call_of_turn2[1] == 6


def test_conversation_drops_oldest_turns_to_fit():
    from embedkit.generate.chat_template import ChatTemplate
    from embedkit.generate.conversation import Conversation

    gen, _ = make(n_ctx=16)
    gen.__dict__["chat_template"] = ChatTemplate("{% for m in messages %}{{ m.content }} {% endfor %}")
    convo = Conversation(system="s")
    for role, text in [("user", "aaa"), ("assistant", "bbb"), ("user", "ccc")]:
        convo.add(role, text)
    assert len(convo.prompt_ids(gen, reserve=1)) == 15  # BOS "s aaa bbb ccc ": fits with 1 to spare
    ids = convo.prompt_ids(gen, reserve=4)  # no longer fits: the first user turn and its reply go
    assert convo.dropped == 2 and ids == gen.tokenize("s ccc ") and convo.messages[0]["content"] == "s"
    convo.add("user", "x" * 20)
    with pytest.raises(GenerationError, match="raise -c"):
        convo.prompt_ids(gen, reserve=4)


@pytest.mark.slow
def test_generating_with_an_embedding_model_is_one_clear_error(minilm_gguf_path) -> None:
    """An encoder GGUF given to `generate` is refused by name, not with an internal error."""
    from click.testing import CliRunner

    from embedkit.cli.main import cli
    from embedkit.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="embedding .encoder. model"):
        Generator(minilm_gguf_path)
    r = CliRunner().invoke(cli, ["generate", "-m", str(minilm_gguf_path), "-p", "hi"])
    assert isinstance(r.exception, UnsupportedModelError)


def test_cli_generate_out_of_range_values_are_clear_errors(fake_cli, capsys):
    """Values outside what llama.cpp gives a meaning are refused by name (once internal errors or silently
    taken as another value): -n below -1 ran like -1, -ngl below -1 like -1, a NaN penalty crashed in
    numpy, --seed -1 (llama.cpp: random) crashed in numpy, --system without --chat was ignored."""
    from embedkit.cli.main import main

    for args in (["-n", "-2"], ["-ngl", "-5"], ["--seed", "-2"]):
        r = run_cli(["generate", "-p", "abc", *args])
        assert r.exit_code == 2 and "is not in the range" in r.stderr, (args, r.stderr)
    for args, msg in [
        (["--presence-penalty", "nan"], "presence penalty must be a finite number, got nan"),
        (["--frequency-penalty", "inf"], "frequency penalty must be a finite number, got inf"),
        (["--repeat-penalty", "nan"], "repeat penalty must be a finite number > 0, got nan"),
        (["--system", "be brief"], "--system applies to the chat template: add --chat (or drop --system)"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["generate", "-p", "abc", "-n", "2", *args])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err == f"error: {msg}\n", (args, err)
    r = run_cli(["generate", "-p", "abc", "-n", "3", "--seed", "-1", "-q"])
    assert r.exit_code == 0 and len(r.stdout) == 3


def test_sampler_seed_minus_one_draws_a_fresh_seed():
    from embedkit.generate import Sampler

    assert 0 <= Sampler(SamplerParams(seed=-1)).seed < 2**32
    assert Sampler(SamplerParams(seed=7)).seed == 7
    with pytest.raises(GenerationError, match="seed must be"):
        Sampler(SamplerParams(seed=-3))


def test_context_too_large_for_memory_is_one_clear_error(tmp_path):
    """-c 100000000 once ended in 'internal error (MemoryError: Unable to allocate 71.5 GiB ...)'."""
    from embedkit.testing.random_models import write_random_model

    path = write_random_model(tmp_path / "tiny.gguf", "llama", "tiny")
    with pytest.raises(GenerationError, match=r"a context of 2147483647 tokens .* GiB of KV cache.*lower -c"):
        Generator(path, n_ctx=2**31 - 1)  # 2 TiB of KV cache for the tiny model


def test_context_beyond_int32_positions_is_refused(fake_cli):
    """-c 99999999999999999999 ended in 'internal error (ValueError: Maximum allowed dimension exceeded)'."""
    r = run_cli(["generate", "-p", "abc", "-c", "99999999999999999999"])
    assert r.exit_code == 2 and "is not in the range 1<=x<=2147483647" in r.stderr
    with pytest.raises(GenerationError, match=r"context size must be in \[1, 2147483647\], got 2147483648"):
        Generator.from_parts(None, SuccessorModel(), CharTokenizer(), n_ctx=2**31)
