"""Encoder attention on tensor cores: two strided-batched cuBLAS GEMMs per head around a masked softmax.

For float16 activations (the encoder's default precision). The fused projections qkv [b*T, 3*d] (Q | K | V,
heads inside each, biases added beforehand) are read in place: for head h the sequences are a batch of
stride T*3*d, so each GEMM is one cuBLAS call per head. Scores S [heads, b, T, T] come out in float32
(float32 accumulation, the 1/sqrt(hd) scale in alpha); the softmax writes probabilities P in float16 with
masked keys at 0 and padded query rows all 0 (so their outputs are 0, as `encoder.attention` gives); the
second GEMM writes each head's outputs straight into its columns of out [b*T, d].
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_max, warp_sum
from embedkit.kernels.cuda.launch import fast

_CUDA_R_32F = 0
_CUDA_R_16F = 2
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99
_OP_N, _OP_T = 0, 1
_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)
ROWS_PER_BLOCK = 4  # softmax: one warp per score row
MAX_SCORE_BYTES = 1 << 30  # scratch bound: larger batches fall back to the fused kernel


def gemm_ok(b: int, t: int, n_head: int) -> bool:
    """Whether the scores of this batch fit the scratch bound (float32 scores + float16 probabilities)."""
    return n_head * b * t * t * 6 <= MAX_SCORE_BYTES


@cuda.jit
def masked_softmax_f16_kernel(s, mask, p):
    """p [rows, T] float16 = softmax over the keys with mask 1 of s [rows, T] float32, rows ordered
    (head, sequence, query); a padded query row (mask 0) comes out all 0. One warp per row."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * (cuda.blockDim.x // 32) + cuda.threadIdx.x // 32
    rows, t_len = s.shape
    b = mask.shape[0]
    r = min(row, rows - 1)  # every lane takes part in the warp reductions
    seq = (r // t_len) % b
    q = r % t_len
    live = row < rows and mask[seq, q] != 0
    m = np.float32(-np.inf)
    for j in range(lane, t_len, 32):
        if mask[seq, j] != 0:
            m = max(m, s[r, j])
    m = warp_max(m)
    total = np.float32(0.0)
    for j in range(lane, t_len, 32):
        if mask[seq, j] != 0:
            total += math.exp(s[r, j] - m)
    total = warp_sum(total)
    inv = np.float32(1.0) / total if live and total > 0 else np.float32(0.0)
    if row < rows:
        for j in range(lane, t_len, 32):
            e = math.exp(s[r, j] - m) * inv if mask[seq, j] != 0 else np.float32(0.0)
            p[r, j] = e


def _addr(a) -> int:
    return a.__cuda_array_interface__["data"][0]


def attention_gemm(qkv, mask, n_head: int, scale: float, out, empty, stream, cp_stream) -> None:
    """out [b*T, d] float16 = bidirectional attention of qkv [b*T, 3*d] float16 (biases already in) over
    mask int32 [b, T]; `empty(shape, dtype)` allocates the scratch; cuBLAS runs on `cp_stream` (CuPy's
    stream under the numba `stream`, so the launches stay in order)."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    b, t = mask.shape
    d = out.shape[1]
    hd = d // n_head
    s = empty((n_head * b * t, t), np.float32)
    p = empty((n_head * b * t, t), np.float16)
    alpha = np.array(scale, dtype=np.float32)
    handle = cupy.cuda.device.get_cublas_handle()
    base, s0, p0, o0 = _addr(qkv), _addr(s), _addr(p), _addr(out)
    ld, stride = 3 * d, t * 3 * d
    with cp_stream:
        for h in range(n_head):
            # S_h^T (keys x queries, column-major) = K (hd x T)^T . Q (hd x T), per sequence
            cublas.gemmStridedBatchedEx(
                handle, _OP_T, _OP_N, t, t, hd, alpha.ctypes.data,
                base + 2 * (d + h * hd), _CUDA_R_16F, ld, stride,
                base + 2 * (h * hd), _CUDA_R_16F, ld, stride,
                _ZERO.ctypes.data, s0 + 4 * h * b * t * t, _CUDA_R_32F, t, t * t, b,
                _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )  # fmt: skip
    blocks = math.ceil(n_head * b * t / ROWS_PER_BLOCK)
    fast(masked_softmax_f16_kernel)[blocks, ROWS_PER_BLOCK * 32, stream](s, mask, p)
    with cp_stream:
        for h in range(n_head):
            # O_h^T (hd x queries) = V (hd x keys) . P^T (keys x queries), into out's columns of head h
            cublas.gemmStridedBatchedEx(
                handle, _OP_N, _OP_N, hd, t, t, _ONE.ctypes.data,
                base + 2 * (2 * d + h * hd), _CUDA_R_16F, ld, stride,
                p0 + 2 * h * b * t * t, _CUDA_R_16F, t, t * t,
                _ZERO.ctypes.data, o0 + 2 * h * hd, _CUDA_R_16F, d, t * d, b,
                _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )  # fmt: skip
