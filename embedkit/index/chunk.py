"""Chunking by tokens of the embedding model, with overlap, breaking at headings and paragraphs where it can.

A document is cut into blocks (paragraphs, separated by blank lines, and heading lines: Markdown `#`
headings or reStructuredText underlined titles), blocks into units (sentences and lines, or word runs
when a sentence alone is too long), and units are packed greedily into chunks of at most `max_tokens`.
A heading always starts a new chunk; a paragraph that does not fit in the current chunk but fits in an
empty one starts a new chunk once the current one is at least half full. Consecutive chunks inside one
section share trailing units of up to `overlap` tokens. Every chunk is a contiguous span of the text, so
`text[char_start:char_end]` is exactly the chunk's text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP = 32

_MD_HEADING = re.compile(r"^#{1,6}\s+\S")
_RST_UNDERLINE = re.compile(r"^([=\-~^*+#`:'\"])\1{2,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]+(?=\S)|\n")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class TextChunk:
    """A chunk: its span in the document text, its text, and its token count (without special tokens)."""

    char_start: int
    char_end: int
    text: str
    token_count: int


@dataclass
class _Unit:
    start: int
    end: int
    tokens: int
    block: int  # index of the block (paragraph or heading) it belongs to
    heading: bool


def _blocks(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, is_heading) of paragraphs and heading lines, in order."""
    lines = text.splitlines(keepends=True)
    out: list[tuple[int, int, bool]] = []
    pos = 0
    start: int | None = None  # start of the open paragraph
    skip_underline = False

    def close(end: int) -> None:
        nonlocal start
        if start is not None and text[start:end].strip():
            out.append((start, end, False))
        start = None

    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        stripped = line.strip()
        if skip_underline:
            skip_underline = False
        elif not stripped:
            close(pos)
        elif _MD_HEADING.match(line):
            close(pos)
            out.append((pos, pos + len(line), True))
        elif (start is None and not _RST_UNDERLINE.match(line) and _RST_UNDERLINE.match(nxt)
              and len(nxt.strip()) >= len(stripped)):
            out.append((pos, pos + len(line) + len(nxt), True))
            skip_underline = True
        elif start is None:
            start = pos
        pos += len(line)
    close(pos)
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_text(
    text: str,
    count_tokens: Callable[[str], int],
    max_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[TextChunk]:
    """Split `text` into chunks of at most about `max_tokens` tokens (see the module docstring).

    `count_tokens(s)` counts the model's tokens of `s`; any constant it adds for special tokens (its value
    on the empty string) is subtracted.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    overlap = max(0, min(overlap, max_tokens // 2))
    base = count_tokens("")

    def n_tokens(s: str) -> int:
        return max(0, count_tokens(s) - base)

    units = _units(text, n_tokens, max_tokens)
    groups = _pack(units, max_tokens, overlap)
    chunks: list[TextChunk] = []
    for g in groups:
        s, e = _trim(text, g[0].start, g[-1].end)
        if e > s:
            chunks.append(TextChunk(s, e, text[s:e], n_tokens(text[s:e])))
    return chunks


def _units(text: str, n_tokens: Callable[[str], int], max_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    for bi, (bs, be, heading) in enumerate(_blocks(text)):
        bs, be = _trim(text, bs, be)
        block_tokens = n_tokens(text[bs:be])
        if block_tokens <= max_tokens or heading:
            units.append(_Unit(bs, be, block_tokens, bi, heading))
            continue
        pieces, prev = [], bs
        for m in _SENTENCE_END.finditer(text, bs, be):
            pieces.append((prev, m.start()))
            prev = m.end()
        pieces.append((prev, be))
        for ps, pe in pieces:
            ps, pe = _trim(text, ps, pe)
            if pe <= ps:
                continue
            t = n_tokens(text[ps:pe])
            if t <= max_tokens:
                units.append(_Unit(ps, pe, t, bi, False))
            else:
                units.extend(_word_runs(text, ps, pe, n_tokens, max_tokens, bi))
    return units


def _word_runs(text, start, end, n_tokens, max_tokens, block) -> list[_Unit]:
    """Cut an over-long sentence into runs of whole words (or raw character slices for giant 'words')."""
    runs: list[_Unit] = []
    run_start, run_end, run_tokens = None, None, 0
    for m in _WORD.finditer(text, start, end):
        t = n_tokens(m.group())
        if t > max_tokens:  # a single enormous token string (minified code, base64): slice it
            if run_start is not None:
                runs.append(_Unit(run_start, run_end, run_tokens, block, False))
                run_start, run_tokens = None, 0
            step = max(1, len(m.group()) * max_tokens // (t + 1))
            for s in range(m.start(), m.end(), step):
                e = min(s + step, m.end())
                runs.append(_Unit(s, e, n_tokens(text[s:e]), block, False))
            continue
        if run_start is not None and run_tokens + t > max_tokens:
            runs.append(_Unit(run_start, run_end, run_tokens, block, False))
            run_start, run_tokens = None, 0
        if run_start is None:
            run_start = m.start()
        run_end, run_tokens = m.end(), run_tokens + t
    if run_start is not None:
        runs.append(_Unit(run_start, run_end, run_tokens, block, False))
    return runs


def _pack(units: list[_Unit], max_tokens: int, overlap: int) -> list[list[_Unit]]:
    groups: list[list[_Unit]] = []
    cur: list[_Unit] = []
    cur_tokens = 0
    fresh = 0  # units in `cur` that are not overlap carried over from the previous chunk

    per_block: dict[int, int] = {}
    for u in units:
        per_block[u.block] = per_block.get(u.block, 0) + u.tokens

    for i, u in enumerate(units):
        starts_block = i == 0 or units[i - 1].block != u.block
        only_headings = all(x.heading for x in cur)
        if u.heading and cur and not only_headings:
            if fresh:
                groups.append(cur)
            cur, cur_tokens, fresh = [], 0, 0
        elif cur and fresh and starts_block and not only_headings:
            need = per_block[u.block]
            if cur_tokens + need > max_tokens and need <= max_tokens and cur_tokens >= max_tokens // 2:
                groups.append(cur)
                cur, cur_tokens, fresh = _tail(cur, overlap), 0, 0
                cur_tokens = sum(x.tokens for x in cur)
        if cur and cur_tokens + u.tokens > max_tokens:
            if fresh:
                groups.append(cur)
                cur = _tail(cur, overlap)
            else:
                cur = []
            fresh = 0
            while cur and sum(x.tokens for x in cur) + u.tokens > max_tokens:
                cur.pop(0)
            cur_tokens = sum(x.tokens for x in cur)
        cur.append(u)
        cur_tokens += u.tokens
        fresh += 1
    if cur and fresh:
        groups.append(cur)
    return groups


def _tail(group: list[_Unit], overlap: int) -> list[_Unit]:
    """Trailing non-heading units of `group` holding at most `overlap` tokens."""
    out: list[_Unit] = []
    total = 0
    for u in reversed(group):
        if u.heading or total + u.tokens > overlap:
            break
        out.insert(0, u)
        total += u.tokens
    return out
