"""Bidirectional attention over padded batches (BERT encoders), one (sequence, head) pair per thread.

Many small [t, hd] x [hd, t] products are slow through BLAS on a busy machine (threading overhead
dominates); plain loops are faster and skip padded rows and keys entirely.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
        kk = np.empty((n, hd), dtype=np.float32)
        vv = np.empty((n, hd), dtype=np.float32)
        for jj in range(n):
            for d in range(hd):
                kk[jj, d] = k[b, idx[jj], h, d]
                vv[jj, d] = v[b, idx[jj], h, d]
        s = np.empty(n, dtype=np.float32)
        acc = np.empty(hd, dtype=np.float32)
        for i in range(t):
            if not keep[b, i]:
                for d in range(hd):
                    out[b, i, h, d] = 0.0
                continue
            m = np.float32(-np.inf)
            for jj in range(n):
                dot = np.float32(0.0)
                for d in range(hd):
                    dot += q[b, i, h, d] * kk[jj, d]
                dot *= scale
                s[jj] = dot
                if dot > m:
                    m = dot
            total = np.float32(0.0)
            for jj in range(n):
                e = np.exp(s[jj] - m)
                s[jj] = e
                total += e
            for d in range(hd):
                acc[d] = 0.0
            for jj in range(n):
                p = s[jj]
                for d in range(hd):
                    acc[d] += p * vv[jj, d]
            inv = np.float32(1.0) / total
            for d in range(hd):
                out[b, i, h, d] = acc[d] * inv
