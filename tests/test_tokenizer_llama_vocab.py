"""llama.cpp's tokenizer test suite: every case of every vocab gives exactly the ids in its .out
(no BOS/EOS added, special tokens not parsed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.gguf import GGUFFile
from embedkit.tokenizer import load_tokenizer

VOCABS = ["bert-bge", "llama-spm", "gpt-2", "llama-bpe", "qwen2", "falcon"]
SEP = "\n__ggml_vocab_test__\n"


def _cases(vocab_dir: Path, name: str) -> list[tuple[str, list[int]]]:
    base = vocab_dir / f"ggml-vocab-{name}.gguf"
    inputs = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split(SEP)
    outputs = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) == len(outputs), f"{name}: {len(inputs)} inputs vs {len(outputs)} outputs"
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inputs, outputs, strict=True)]


@pytest.mark.parametrize("name", VOCABS)
def test_vocab_suite(vocab_dir: Path, name: str) -> None:
    with GGUFFile(vocab_dir / f"ggml-vocab-{name}.gguf") as f:
        tok = load_tokenizer(f)
    cases = _cases(vocab_dir, name)
    assert len(cases) > 10
    bad = []
    for text, want in cases:
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != want:
            bad.append((text, want, got))
    assert not bad, f"{len(bad)}/{len(cases)} cases differ, first: {bad[0]!r}"
