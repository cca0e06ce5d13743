"""Pooling of per-token hidden states into one vector per text, and L2 normalisation."""

from __future__ import annotations

import numpy as np

from embedkit.errors import InputError

POOLINGS = ("mean", "cls", "last", "none")


def pool(hidden: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Pool hidden [b, t, d] over the tokens where mask [b, t] is 1 (right padding) -> [b, d] float32.

    mean: average of the real tokens; cls: the first token; last: the last real token;
    none: the first token as well (llama.cpp's "none" keeps every token; one vector per text needs a choice).
    """
    if method not in POOLINGS:
        raise InputError(f"pooling {method!r}: expected one of {', '.join(POOLINGS)}")
    m = np.asarray(mask, dtype=np.float32)
    lengths = m.sum(axis=1)
    if np.any(lengths < 1):
        raise InputError("pooling: every text needs at least one token")
    if method == "mean":
        summed = np.einsum("btd,bt->bd", hidden, m, dtype=np.float64)
        return (summed / lengths[:, None]).astype(np.float32)
    if method == "last":
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), lengths.astype(np.int64) - 1], dtype=np.float32)
    return np.ascontiguousarray(hidden[:, 0], dtype=np.float32)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (rows of zeros stay zero)."""
    norms = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
    return (x / np.maximum(norms, eps)[:, None]).astype(np.float32)
