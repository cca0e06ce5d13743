"""Chunker: spans are exact, every word is covered, chunks respect the token budget, headings start chunks,
consecutive chunks overlap. Token counter: words and punctuation (+2 for CLS/SEP, as a BERT tokenizer)."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit.index.chunk import chunk_text


def count(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


def n(text: str) -> int:
    return count(text) - 2


def _random_doc(rng: random.Random, n_paras: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "pgvector", "index", "query", "chunk", "token", "vector"]
    parts = []
    for i in range(n_paras):
        if rng.random() < 0.2:
            parts.append("#" * rng.randint(1, 3) + f" Heading {i}")
        sents = []
        for _ in range(rng.randint(1, 6)):
            sents.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 25))).capitalize() + ".")
        parts.append(" ".join(sents))
    return "\n\n".join(parts) + "\n"


def _check(text: str, chunks, max_tokens: int) -> None:
    assert chunks, "non-empty text gives chunks"
    covered = [False] * len(text)
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text
        assert c.text == c.text.strip()
        assert c.token_count == n(c.text)
        for i in range(c.char_start, c.char_end):
            covered[i] = True
    for m in re.finditer(r"\S", text):
        assert covered[m.start()], f"character {m.start()} {text[m.start()]!r} is in no chunk"
    starts = [c.char_start for c in chunks]
    assert starts == sorted(starts)


def test_random_documents_cover_text_and_respect_budget():
    rng = random.Random(1234)
    for trial in range(30):
        text = _random_doc(rng, rng.randint(1, 25))
        max_tokens = rng.choice([16, 40, 100])
        chunks = chunk_text(text, count, max_tokens=max_tokens, overlap=max_tokens // 5)
        _check(text, chunks, max_tokens)
        for c in chunks:
            # unit counts are summed separately, so allow a couple of tokens of slack at unit joins
            assert c.token_count <= max_tokens + 2, (trial, c.token_count)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=400),
       st.integers(8, 64))
def test_arbitrary_text_spans_are_exact(text, max_tokens):
    if not text.strip():
        assert chunk_text(text, count, max_tokens) == []
        return
    chunks = chunk_text(text, count, max_tokens=max_tokens, overlap=4)
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text


def test_headings_start_new_chunks():
    body = " ".join(["word"] * 12) + "."
    text = f"# One\n\n{body}\n\n# Two\n\n{body}\n\nTitle three\n===========\n\n{body}\n"
    chunks = chunk_text(text, count, max_tokens=100, overlap=10)
    assert [c.text.splitlines()[0] for c in chunks] == ["# One", "# Two", "Title three"]


def test_paragraph_boundaries_preferred():
    p1 = " ".join(f"a{i}" for i in range(30)) + "."
    p2 = " ".join(f"b{i}" for i in range(30)) + "."
    text = p1 + "\n\n" + p2
    chunks = chunk_text(text, count, max_tokens=40, overlap=0)
    assert [c.text for c in chunks] == [p1, p2]


def test_overlap_between_consecutive_chunks():
    sents = [f"Sentence number {i} has some words." for i in range(40)]
    text = " ".join(sents)
    chunks = chunk_text(text, count, max_tokens=40, overlap=10)
    assert len(chunks) > 3
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.char_start < a.char_end, "consecutive chunks share text"
        assert b.char_start > a.char_start


def test_long_word_runs_are_split():
    text = "x" * 5000
    chunks = chunk_text(text, lambda s: len(s) // 4 + 2, max_tokens=64, overlap=0)
    assert len(chunks) > 10
    assert "".join(c.text for c in chunks) == text
