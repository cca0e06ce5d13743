"""Group tokenized texts of different lengths into padded batches (sorted by length, little padding)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Upper bound on padded tokens per encoder batch (bounds activation memory: ~n_ff * 4 bytes per token).
MAX_BATCH_TOKENS = 16384


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS) -> Iterator[np.ndarray]:
    """Yield arrays of text indices, longest texts first.

    Each batch holds at most `batch_size` texts and `max_tokens` padded tokens.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        n = max(1, min(batch_size, max_tokens // longest, len(order) - start))
        yield order[start : start + n]
        start += n


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists -> (ids int64 [b, t], mask uint8 [b, t] with 1 for real tokens)."""
    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=np.uint8)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
