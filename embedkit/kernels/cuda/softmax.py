"""Softmax over the last dimension, one block per row (float32 in and out)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.reduce import block_max, block_sum

THREADS = 256


@cuda.jit
def softmax_kernel(x, out):
    r = cuda.blockIdx.x
    scratch = cuda.shared.array(32, dtype=np.float32)
    n = x.shape[1]
    m = np.float32(-np.inf)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        m = max(m, x[r, i])
    m = block_max(m, scratch)
    s = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        s += math.exp(x[r, i] - m)
    inv = np.float32(1.0) / block_sum(s, scratch)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        out[r, i] = math.exp(x[r, i] - m) * inv


def softmax(x, out, stream=0) -> None:
    """x, out float32 [n, d] device."""
    fast(softmax_kernel)[x.shape[0], THREADS, stream](x, out)
