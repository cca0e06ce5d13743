"""Open-addressing hash tables in numpy arrays, built and probed inside Numba kernels.

`StrTable`: code-point strings (a vocabulary) -> token id, probed with spans of a text.
`PairTable`: int64 keys (a pair of symbol ids) -> int64 value.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EMPTY = -1


@njit(cache=True, inline="always")
def _mix(h: np.uint64) -> np.uint64:
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return h


@njit(cache=True)
def span_hash(cps: np.ndarray, a: int, b: int) -> np.uint64:
    """Hash of the code points cps[a:b] (FNV-1a over 32-bit units, then a final mix)."""
    h = np.uint64(0xCBF29CE484222325)
    for i in range(a, b):
        h ^= np.uint64(cps[i])
        h *= np.uint64(0x100000001B3)
    return _mix(h)


@njit(cache=True)
def build_str_table(tok_cps: np.ndarray, tok_off: np.ndarray) -> np.ndarray:
    """Slots (power of two, >= 2x the tokens) holding token ids; later tokens win, as in a dict."""
    n = len(tok_off) - 1
    size = 1
    while size < 2 * n + 2:
        size *= 2
    slots = np.full(size, _EMPTY, np.int64)
    mask = np.uint64(size - 1)
    for t in range(n):
        a, b = tok_off[t], tok_off[t + 1]
        j = span_hash(tok_cps, a, b) & mask
        while True:
            s = slots[j]
            if s == _EMPTY:
                slots[j] = t
                break
            if _same(tok_cps, tok_off[s], tok_off[s + 1], tok_cps, a, b):
                slots[j] = t
                break
            j = (j + np.uint64(1)) & mask
    return slots


@njit(cache=True, inline="always")
def _same(x: np.ndarray, xa: int, xb: int, y: np.ndarray, ya: int, yb: int) -> bool:
    if xb - xa != yb - ya:
        return False
    for k in range(xb - xa):
        if x[xa + k] != y[ya + k]:
            return False
    return True


@njit(cache=True)
def str_lookup(slots: np.ndarray, tok_cps: np.ndarray, tok_off: np.ndarray, cps: np.ndarray, a: int, b: int) -> int:
    """Token id of the text cps[a:b], or -1."""
    mask = np.uint64(len(slots) - 1)
    j = span_hash(cps, a, b) & mask
    while True:
        s = slots[j]
        if s == _EMPTY:
            return -1
        if _same(tok_cps, tok_off[s], tok_off[s + 1], cps, a, b):
            return s
        j = (j + np.uint64(1)) & mask


@njit(cache=True)
def build_pair_table(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot keys, slot values) for int64 keys >= 0; the first occurrence of a key wins."""
    size = 1
    while size < 2 * len(keys) + 2:
        size *= 2
    sk = np.full(size, _EMPTY, np.int64)
    sv = np.zeros(size, np.int64)
    mask = np.uint64(size - 1)
    for i in range(len(keys)):
        k = keys[i]
        j = _mix(np.uint64(k)) & mask
        while sk[j] != _EMPTY and sk[j] != k:
            j = (j + np.uint64(1)) & mask
        if sk[j] == _EMPTY:
            sk[j] = k
            sv[j] = values[i]
    return sk, sv


@njit(cache=True, inline="always")
def pair_lookup(sk: np.ndarray, sv: np.ndarray, k: np.int64) -> np.int64:
    """Value of key k, or -1."""
    mask = np.uint64(len(sk) - 1)
    j = _mix(np.uint64(k)) & mask
    while True:
        s = sk[j]
        if s == k:
            return sv[j]
        if s == _EMPTY:
            return -1
        j = (j + np.uint64(1)) & mask
