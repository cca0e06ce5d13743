"""Activations quantized to int8 blocks of 32 (like ggml's Q8_0/Q8_1) for the integer matvec kernels.

x ~= xd[b] * xq[32 b + i]; xs[b] = xd[b] * sum(xq[32 b : 32 b + 32]) feeds the min/offset terms of
Q4_1, Q5_1 and the K-quants. Scales stay float32 (ggml rounds Q8_0's to f16): slightly more accurate.
Relative error per element is at most 1/254 of its block's max |x|.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def quantize_activations(x, xq, xd, xs):
    """x float32 [n_tokens, n] -> xq int8 [n_tokens, n], xd, xs float32 [n_tokens, n // 32]."""
    nb = x.shape[1] // 32
    for t in range(x.shape[0]):
        for b in prange(nb):
            o = 32 * b
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[t, o + j]))
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > np.float32(0.0) else np.float32(0.0)
            s = 0
            for j in range(32):
                q = np.int32(np.rint(x[t, o + j] * inv))
                xq[t, o + j] = q
                s += q
            xd[t, b] = d
            xs[t, b] = d * np.float32(s)
