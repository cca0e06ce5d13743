"""Fidelity of an arithmetic to the model: mean KL(reference || ours) and top-1 agreement, teacher-forced.

The reference is a float64 forward of the same dequantized weights, kept compactly as each position's
top-k log-probabilities (normalised over the whole vocabulary, float64) — a Gemma 3 vocabulary of 262,144
logits per position would not fit a test golden. KL is computed on that support plus one bucket holding
the rest of the vocabulary:

    KL_k = sum_{i in top-k} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest),  p_rest = 1 - sum_{top-k} p_i

By the log-sum inequality KL_k <= KL (merging outcomes never increases a divergence); the gap is p_rest
times the divergence between the two distributions restricted to the rest, which is second order in the
log-probability differences there. tests/data/fidelity/make_goldens.py prints both for every arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROWS = 64  # positions whose logits are formed at once


def top_k_log_probs(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest log-probabilities (descending) and their token ids: (int32 [n, k], [n, k])."""
    idx = np.argpartition(-log_probs, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(log_probs, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Rows of logits -> float64 log-probabilities."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def kl_on_support(ref_ids: np.ndarray, ref_lp: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Per row KL_k(reference || q) on the reference's top-k plus a rest bucket (see the module docstring)."""
    p = np.exp(ref_lp)
    lq = np.take_along_axis(log_q, ref_ids.astype(np.int64), axis=1)
    kl = (p * (ref_lp - lq)).sum(axis=1)
    p_rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    q_rest = np.clip(1.0 - np.exp(lq).sum(axis=1), 1e-300, 1.0)
    rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return kl + rest


def model_logits(model: Any, ids: np.ndarray, decode: bool = False) -> Iterator[np.ndarray]:
    """Teacher-forced float32 logits of every position of `ids`: one prompt batch, yielded ROWS positions at a
    time; with `decode`, one token per forward (generation's path: single-token kernels), one row at a time."""
    ids = np.asarray(ids, dtype=np.int32)
    state = model.new_state(len(ids))
    if decode:
        for i in range(len(ids)):
            yield model.forward(ids[i : i + 1], state, i)
        return
    hidden = model.forward(np.asarray(ids, dtype=np.int32), state, 0, output="hidden", all_positions=True)
    be = model.placement.output
    for s in range(0, len(hidden), ROWS):
        rows = np.ascontiguousarray(hidden[s : s + ROWS])
        yield np.asarray(be.to_host(model.head(be, be.take(rows))), dtype=np.float32)


@dataclass
class Fidelity:
    """Mean KL(reference || ours) on the reference's support, and the fraction of equal argmaxes; per position
    (not in the repr): the KL, our argmax, and our log-probability of our argmax minus that of the reference's
    (0 where they agree: how far the other way a flipped position went)."""

    mean_kl: float
    top1: float
    n: int
    kl: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    argmax: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    gap: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def flips(self, ref_ids: np.ndarray) -> np.ndarray:
        """Positions whose argmax differs from the reference's (`ref_ids[:, 0]`)."""
        return np.flatnonzero(self.argmax != ref_ids[: self.n, 0])


def measure_fidelity(
    model: Any, ids: np.ndarray, ref_ids: np.ndarray, ref_lp: np.ndarray, decode: bool = False
) -> Fidelity:
    """Fidelity of `model`'s logits on `ids` to a reference's top-k log-probabilities at every position
    (`decode`: computed one token at a time, as generation does, see `model_logits`)."""
    kls, tops, gaps = [], [], []
    s = 0
    for logits in model_logits(model, ids, decode):
        n = len(logits)
        log_q = log_softmax64(logits)
        kls.append(kl_on_support(ref_ids[s : s + n], ref_lp[s : s + n], log_q))
        tops.append(logits.argmax(axis=1))
        ref_top = np.take_along_axis(log_q, ref_ids[s : s + n, :1].astype(np.int64), axis=1)[:, 0]
        gaps.append(log_q.max(axis=1) - ref_top)
        s += n
    kl, top = np.concatenate(kls), np.concatenate(tops)
    same = int((top == ref_ids[:s, 0]).sum())
    return Fidelity(float(kl.mean()), same / s, s, kl, top, np.concatenate(gaps))
