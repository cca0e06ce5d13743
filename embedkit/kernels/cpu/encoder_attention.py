"""Bidirectional attention over padded batches (BERT encoders), one (sequence, head) pair per thread.

Many small [t, hd] x [hd, t] products are slow through BLAS on a busy machine (threading overhead
dominates); plain loops are faster and skip padded rows and keys entirely. Four query rows are
scored at a time against keys transposed to [hd, n], so each key value loaded feeds four
multiply-adds along a contiguous, vectorised loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True)
def _softmax_row(s, n):  # pragma: no cover - compiled
    """In-place softmax of s[:n]."""
    m = s[0]
    for j in range(1, n):
        m = max(m, s[j])
    total = np.float32(0.0)
    for j in range(n):
        e = np.exp(s[j] - m)
        s[j] = e
        total += e
    inv = np.float32(1.0) / total
    for j in range(n):
        s[j] *= inv


@njit(parallel=True, cache=True, fastmath=True)
def encoder_attention(q, k, v, keep, scale, out):  # pragma: no cover - compiled
    """out[b, i, h, :] = softmax_j(scale * q[b,i,h] . k[b,j,h] over keys with keep[b,j]) @ v[b, :, h].

    q, k, v, out: float32 [b, t, heads, hd] (C-contiguous); keep: uint8 [b, t] (1 = real token).
    Query rows that are padding get zeros.
    """
    nb, t, nh, hd = q.shape
    for bh in prange(nb * nh):
        b = bh // nh
        h = bh % nh
        idx = np.empty(t, dtype=np.int64)
        n = 0
        for j in range(t):
            if keep[b, j]:
                idx[n] = j
                n += 1
            else:
                for d in range(hd):
                    out[b, j, h, d] = 0.0
        n4 = (n + 3) // 4 * 4  # query rows padded to a whole block of 4 (zeros)
        qs = np.zeros((n4, hd), dtype=np.float32)
        kt = np.empty((hd, n), dtype=np.float32)
        vv = np.empty((n, hd), dtype=np.float32)
        for jj in range(n):
            for d in range(hd):
                qs[jj, d] = q[b, idx[jj], h, d] * scale
                kt[d, jj] = k[b, idx[jj], h, d]
                vv[jj, d] = v[b, idx[jj], h, d]
        s0 = np.empty(n, dtype=np.float32)
        s1 = np.empty(n, dtype=np.float32)
        s2 = np.empty(n, dtype=np.float32)
        s3 = np.empty(n, dtype=np.float32)
        acc = np.empty((4, hd), dtype=np.float32)
        for i0 in range(0, n, 4):
            s0[:] = 0.0
            s1[:] = 0.0
            s2[:] = 0.0
            s3[:] = 0.0
            for d in range(hd):
                a0 = qs[i0, d]
                a1 = qs[i0 + 1, d]
                a2 = qs[i0 + 2, d]
                a3 = qs[i0 + 3, d]
                for jj in range(n):
                    kv = kt[d, jj]
                    s0[jj] += a0 * kv
                    s1[jj] += a1 * kv
                    s2[jj] += a2 * kv
                    s3[jj] += a3 * kv
            _softmax_row(s0, n)
            _softmax_row(s1, n)
            _softmax_row(s2, n)
            _softmax_row(s3, n)
            acc[:] = 0.0
            for jj in range(n):
                p0 = s0[jj]
                p1 = s1[jj]
                p2 = s2[jj]
                p3 = s3[jj]
                for d in range(hd):
                    x = vv[jj, d]
                    acc[0, d] += p0 * x
                    acc[1, d] += p1 * x
                    acc[2, d] += p2 * x
                    acc[3, d] += p3 * x
            for r in range(min(4, n - i0)):
                row = idx[i0 + r]
                for d in range(hd):
                    out[b, row, h, d] = acc[r, d]
