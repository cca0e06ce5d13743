"""A binary min-heap over parallel arrays for the merge loops (Numba): key (primary), left (ties),
plus the right index and the merged size carried along."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _less(hk: np.ndarray, hl: np.ndarray, i: int, j: int) -> bool:
    return hk[i] < hk[j] or (hk[i] == hk[j] and hl[i] < hl[j])


@njit(cache=True, inline="always")
def _swap(hk, hl, hr, hs, i, j):  # noqa: ANN001
    hk[i], hk[j] = hk[j], hk[i]
    hl[i], hl[j] = hl[j], hl[i]
    hr[i], hr[j] = hr[j], hr[i]
    hs[i], hs[j] = hs[j], hs[i]


@njit(cache=True)
def heap_push(hk, hl, hr, hs, n, key, left, right, size):  # noqa: ANN001
    """Add an entry to a heap of n entries; returns the new count."""
    hk[n], hl[n], hr[n], hs[n] = key, left, right, size
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if not _less(hk, hl, i, p):
            break
        _swap(hk, hl, hr, hs, i, p)
        i = p
    return n + 1


@njit(cache=True)
def heap_pop(hk, hl, hr, hs, n):  # noqa: ANN001
    """Move the smallest entry to index n-1 (read it there); returns the new count n-1."""
    n -= 1
    _swap(hk, hl, hr, hs, 0, n)
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(hk, hl, c + 1, c):
            c += 1
        if not _less(hk, hl, c, i):
            break
        _swap(hk, hl, hr, hs, i, c)
        i = c
    return n
