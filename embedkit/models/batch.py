"""Which sequence and position each row of a forward belongs to (llama.cpp's llama_batch with seq_ids).

A forward's rows are grouped into spans: consecutive rows of one sequence (slot) at consecutive
positions, e.g. one decode token of slot 0, a chunk of slot 3's prompt, a decode token of slot 5.
Matmuls run over all rows at once (each weight is read once per step); attention runs per span, each
span against its own slot's cache, so a sequence never sees another's keys; RoPE uses each row's own
position; a sliding window counts positions of the row's own sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeqSpan:
    """Rows start .. start + n - 1 of a batch: tokens of sequence `slot` at positions pos0 .. pos0 + n - 1."""

    slot: int
    pos0: int
    start: int
    n: int

    @property
    def stop(self) -> int:
        """One past the span's last row."""
        return self.start + self.n


class SeqBatch:
    """The spans of one forward, covering its rows 0 .. n_rows - 1 in order."""

    def __init__(self, spans: Sequence[SeqSpan]) -> None:
        """Check the spans tile the rows and give every row its position."""
        self.spans = tuple(spans)
        self._attention_spans: list[tuple[int, int, int]] | None = None
        row = 0
        for s in self.spans:
            if s.start != row or s.n < 1 or s.pos0 < 0:
                raise ValueError(f"spans must cover the rows in order with n >= 1 and pos0 >= 0, got {s}")
            row = s.stop
        if row == 0:
            raise ValueError("a batch needs at least one row")
        self.n_rows = row
        self.positions = (
            np.concatenate([np.arange(s.pos0, s.pos0 + s.n, dtype=np.int32) for s in self.spans])
            if len(self.spans) > 1
            else np.arange(self.spans[0].pos0, self.spans[0].pos0 + row, dtype=np.int32)
        )

    @classmethod
    def single(cls, pos0: int, n: int, slot: int = 0) -> SeqBatch:
        """n tokens of one sequence at positions pos0 .. (the classic forward)."""
        return cls([SeqSpan(slot, pos0, 0, n)])

    @classmethod
    def of(cls, parts: Sequence[tuple[int, int, int]]) -> SeqBatch:
        """A batch from (slot, pos0, n_tokens) parts, rows in that order."""
        spans, row = [], 0
        for slot, pos0, n in parts:
            spans.append(SeqSpan(int(slot), int(pos0), row, int(n)))
            row += int(n)
        return cls(spans)

    def attention_spans(self) -> list[tuple[int, int, int]]:
        """(start, stop, pos0) of every span, as the backends' `attention_seqs` takes them (one list per batch,
        returned to every layer: a backend may key per-batch tables on it)."""
        if self._attention_spans is None:
            self._attention_spans = [(s.start, s.stop, s.pos0) for s in self.spans]
        return self._attention_spans

    def __repr__(self) -> str:
        return f"SeqBatch({list(self.spans)!r})"
