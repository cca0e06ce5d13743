"""Sequence pooling for embeddings: mean over unmasked tokens, first token (CLS), last unmasked token."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.launch import fast

MEAN, CLS, LAST = 0, 1, 2
POOLING_MODES = {"mean": MEAN, "cls": CLS, "last": LAST}


@cuda.jit
def pool_kernel(x, mask, mode, out):
    """x [b, t, d], mask int32 [b, t] -> out [b, d]; one thread per (sequence, dim)."""
    b = cuda.blockIdx.y
    d = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if d >= x.shape[2]:
        return
    T = x.shape[1]
    if mode == CLS:
        out[b, d] = x[b, 0, d]
    elif mode == LAST:
        last = 0
        for t in range(T):
            if mask[b, t] != 0:
                last = t
        out[b, d] = x[b, last, d]
    else:
        s = np.float32(0.0)
        n = 0
        for t in range(T):
            if mask[b, t] != 0:
                s += x[b, t, d]
                n += 1
        out[b, d] = s / np.float32(max(n, 1))


def pool(x, mask, mode: int, out, stream=0) -> None:
    """Pool x [b, t, d] over t into out [b, d] with `mode` (MEAN, CLS, LAST)."""
    b, t, d = x.shape
    threads = 128
    fast(pool_kernel)[(max(1, math.ceil(d / threads)), b), threads, stream](x, mask, mode, out)
