"""Tokenizer behaviour on the small llama.cpp vocab files: specials, flags, decoding, errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from embedkit.errors import TokenizerError
from embedkit.gguf import GGUFFile
from embedkit.tokenizer import Tokenizer, load_tokenizer
from embedkit.tokenizer.pretokenize import SUPPORTED_PRE, PreTokenizer

TEXTS = [
    "Hello world",
    " leading space and trailing  ",
    "繁體中文與简体中文，日本語のテキスト。",
    "emoji 👨‍👩‍👧‍👦 🦙 ✅ and accents café Äpfel",
    "code:\n\tdef f(x):\n\t\treturn x ** 2  # square\n",
    "   \n\n\t  mixed whitespace \r\n",
]


@pytest.fixture(scope="module")
def toks(vocab_dir: Path) -> dict[str, Tokenizer]:
    out = {}
    for name in ("llama-spm", "gpt-2", "llama-bpe", "qwen2", "bert-bge"):
        with GGUFFile(vocab_dir / f"ggml-vocab-{name}.gguf") as f:
            out[name] = load_tokenizer(f)
    return out


def _random_text(rng: random.Random, n: int) -> str:
    pools = ["abc XYZ", "  \t\n", "中文字", "ひらがな", "éü", "😀🦙", "0123", ".,;!?'\"<>|"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "llama-bpe", "qwen2"])
def test_decode_inverts_encode(toks: dict[str, Tokenizer], name: str) -> None:
    tok = toks[name]
    rng = random.Random(1234)
    for text in TEXTS + [_random_text(rng, rng.randint(1, 60)) for _ in range(200)]:
        ids = tok.encode(text, add_special=False)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8") == (
            " " + text if tok.vocab.add_space_prefix else text
        )


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "qwen2"])
def test_incremental_decoder_holds_back_partial_utf8(toks: dict[str, Tokenizer], name: str) -> None:
    tok = toks[name]
    text = "byte 🦙 fallback 😶‍🌫️ and 中文 ✅"
    ids = tok.encode(text, add_special=False)
    dec = tok.incremental_decoder()
    chunks = [dec.feed(i) for i in ids]
    assert "".join(chunks) + dec.flush() == text
    for c in chunks:  # never a replacement character from a split sequence
        assert "\ufffd" not in c
    # a token that is only part of a character yields nothing until the character completes
    if name != "llama-spm":
        assert any(c == "" for c in chunks)


def test_bos_eos_and_cls_sep(toks: dict[str, Tokenizer]) -> None:
    spm, bpe, bert = toks["llama-spm"], toks["llama-bpe"], toks["bert-bge"]
    assert spm.add_bos and spm.encode("Hi")[0] == spm.bos_id == 1
    assert spm.encode("Hi", add_special=False)[0] != spm.bos_id
    assert bpe.add_bos and bpe.encode("Hi")[0] == bpe.bos_id == 128000  # llama-bpe adds BOS by default
    assert not toks["gpt-2"].add_bos and toks["gpt-2"].encode("Hi") == toks["gpt-2"].encode("Hi", False)
    ids = bert.encode("hello world")
    assert ids[0] == bert.cls_id == 101 and ids[-1] == bert.sep_id == 102
    assert bert.encode("hello world", add_special=False) == ids[1:-1]


def test_parse_special(toks: dict[str, Tokenizer]) -> None:
    q = toks["qwen2"]
    text = "<|im_start|>user\nHi<|im_end|>"
    on = q.encode(text, add_special=False, parse_special=True)
    off = q.encode(text, add_special=False, parse_special=False)
    start, end = q.vocab.token_to_id["<|im_start|>"], q.vocab.token_to_id["<|im_end|>"]
    assert on[0] == start and on[-1] == end and len(on) < len(off)
    assert start not in off and end not in off
    assert q.decode(on) == text and q.decode(on, skip_special=True) == "user\nHi"
    assert q.is_eog(end) and q.is_eog(q.eos_id) and not q.is_eog(start)
    # user-defined tokens are matched even without parse_special (as llama.cpp does)
    pad = q.vocab.token_to_id["[PAD151646]"]
    assert q.encode("x[PAD151646]y", add_special=False) == [*q.encode("x", False), pad, *q.encode("y", False)]


def test_spm_space_prefix_after_special(toks: dict[str, Tokenizer]) -> None:
    spm = toks["llama-spm"]
    ids = spm.encode("<s>Hello", add_special=False, parse_special=True)
    assert ids == [1, *spm.encode("Hello", add_special=False)]
    assert spm.decode(ids, skip_special=True) == "Hello"


def test_unknown_pre_lists_supported(vocab_dir: Path) -> None:
    with GGUFFile(vocab_dir / "ggml-vocab-gpt-2.gguf") as f:
        md = dict(f.metadata)
        md["tokenizer.ggml.pre"] = "no-such-pre"
        with pytest.raises(TokenizerError, match="no-such-pre.*supported: .*qwen2"):
            load_tokenizer(md)


def test_missing_or_unsupported_model(vocab_dir: Path) -> None:
    with GGUFFile(vocab_dir / "ggml-vocab-gpt-2.gguf") as f:
        md = dict(f.metadata)
        with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
            load_tokenizer({k: v for k, v in md.items() if k != "tokenizer.ggml.model"})
        with pytest.raises(TokenizerError, match="'rwkv' is not supported"):
            load_tokenizer({**md, "tokenizer.ggml.model": "rwkv"})
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            load_tokenizer({**md, "tokenizer.ggml.bos_token_id": 10**6})


def test_token_to_piece_bounds(toks: dict[str, Tokenizer]) -> None:
    tok = toks["gpt-2"]
    assert tok.token_to_piece(tok.encode(" world", False)[0]) == b" world"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.token_to_piece(tok.vocab_size)


@pytest.mark.parametrize("pre", SUPPORTED_PRE)
def test_every_pre_tokenizer_splits_losslessly(pre: str) -> None:
    split = PreTokenizer(pre).split
    rng = random.Random(7)
    for text in TEXTS + [_random_text(rng, 80) for _ in range(20)]:
        words = split(text)
        assert "".join(words) == text and all(words)


def test_pre_tokenizer_rules() -> None:
    assert PreTokenizer("gpt-2").split("Hello  world's 123") == ["Hello", " ", " world", "'s", " 123"]
    assert PreTokenizer("llama-bpe").split("abc 12345\n\n  x") == ["abc", " ", "123", "45", "\n\n", " ", " x"]
    assert PreTokenizer("qwen2").split("ab12 IT'S") == ["ab", "1", "2", " IT", "'S"]
    assert PreTokenizer("smollm").split("x 123") == ["x", " ", "1", "2", "3"]


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_numba_splitter_matches_regex(pre: str) -> None:
    tok = PreTokenizer(pre)
    rng = random.Random(11)
    pools = ["aZé", " ", "  ", "\t", "\n", "\r\n", "'", "'s", "'RE", "'ll", "12", "٣", "中文", "!?.", "😀",
             "\u00a0", "\u3000", "\x85", "\x1c"]
    for _ in range(500):
        text = "".join(rng.choice(pools) for _ in range(rng.randint(1, 25)))
        assert tok.split(text) == tok.split_regex(text), repr(text)
