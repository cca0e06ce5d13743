"""RMSNorm and LayerNorm over the last dimension: one block per row (ggml_rms_norm, ggml_norm)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.reduce import block_sum

THREADS = 256


@cuda.jit
def rms_norm_kernel(x, w, has_w, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) (* w)."""
    r = cuda.blockIdx.x
    scratch = cuda.shared.array(32, dtype=np.float32)
    n = x.shape[1]
    ss = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i]
        ss += v * v
    ss = block_sum(ss, scratch)
    inv = np.float32(1.0) / math.sqrt(ss / np.float32(n) + eps)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i] * inv
        out[r, i] = v * w[i] if has_w else v


@cuda.jit
def layer_norm_kernel(x, w, b, has_w, has_b, eps, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) (* w) (+ b)."""
    r = cuda.blockIdx.x
    scratch = cuda.shared.array(32, dtype=np.float32)
    n = x.shape[1]
    s = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        s += x[r, i]
    mean = block_sum(s, scratch) / np.float32(n)
    ss = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i] - mean
        ss += v * v
    inv = np.float32(1.0) / math.sqrt(block_sum(ss, scratch) / np.float32(n) + eps)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = (x[r, i] - mean) * inv
        if has_w:
            v *= w[i]
        if has_b:
            v += b[i]
        out[r, i] = v


def rms_norm(x, w, eps: float, out, stream=0) -> None:
    """x, out float32 [n, d] device; w float32 [d] or None."""
    rms_norm_kernel[x.shape[0], THREADS, stream](x, w if w is not None else x[0], w is not None, np.float32(eps), out)


def layer_norm(x, w, b, eps: float, out, stream=0) -> None:
    """x, out float32 [n, d] device; w, b float32 [d] or None."""
    layer_norm_kernel[x.shape[0], THREADS, stream](
        x,
        w if w is not None else x[0],
        b if b is not None else x[0],
        w is not None,
        b is not None,
        np.float32(eps),
        out,
    )
