"""Matvec and row dequantization for every supported layout, built from `quant_elem` functions.

One warp per output row; lanes walk the row 32 consecutive elements at a time (so a warp reads
whole blocks together). Used for every type without a dedicated fast kernel (Q4_0/Q8_0 have
`quant_fast`, Q4_K/Q6_K matvecs `quant_kmatvec`), for embedding lookups
(`dequantize_rows`) and to dequantize weights to float16 before a cuBLAS GEMM.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda import quant_kmatvec
from embedkit.kernels.cuda.intrinsics import warp_sum
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.quant_elem import ELEMENT_FUNCTIONS
from embedkit.kernels.cuda.quant_fast import ROWS_PER_BLOCK, WARP


@cache
def _matvec_kernel(layout: str):
    elem = ELEMENT_FUNCTIONS[layout]

    @cuda.jit
    def matvec(a, b, c, x, bias, has_bias, y):
        lane = cuda.threadIdx.x % WARP
        r = cuda.blockIdx.x * ROWS_PER_BLOCK + cuda.threadIdx.x // WARP
        t = cuda.blockIdx.y
        n_in = x.shape[1] if r < y.shape[1] else 0
        acc = np.float32(0.0)
        for i in range(lane, n_in, WARP):
            acc += elem(a, b, c, r, i) * x[t, i]
        acc = warp_sum(acc)
        if lane == 0 and r < y.shape[1]:
            if has_bias:
                acc += bias[r]
            y[t, r] = acc

    return matvec


@cache
def _dequant_kernel(layout: str):
    elem = ELEMENT_FUNCTIONS[layout]

    @cuda.jit
    def dequant_rows(a, b, c, rows, out):
        """out[i, k] = W[rows[i], k] (float32 or float16 out)."""
        i = cuda.blockIdx.x
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        if k < out.shape[1]:
            out[i, k] = elem(a, b, c, rows[i], k)

    @cuda.jit
    def dequant_all(a, b, c, out):
        """out[r, k] = W[r, k] for every row (float32 or float16 out)."""
        r = cuda.blockIdx.x
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        if k < out.shape[1]:
            out[r, k] = elem(a, b, c, r, k)

    return dequant_rows, dequant_all


def matvec(layout: str, views, x, bias, y, stream=0) -> None:
    """y[t, r] = W[r, :] . x[t, :] (+ bias) for a weight held as `views` = (a, b, c) of `layout`
    (Q4_K and Q6_K through their own kernels, `quant_kmatvec`)."""
    if layout in quant_kmatvec.KMATVECS:
        quant_kmatvec.matvec(layout, views, x, bias, y, stream)
        return
    n, rows = y.shape
    has_bias = bias is not None
    fast(_matvec_kernel(layout))[(math.ceil(rows / ROWS_PER_BLOCK), n), ROWS_PER_BLOCK * WARP, stream](
        *views, x, bias if has_bias else y[0], has_bias, y
    )


def dequantize_rows(layout: str, views, rows, out, stream=0) -> None:
    """out[i, :] = W[rows[i], :] (rows: device int32); out float32 or float16 [len(rows), n_cols]."""
    n, k = out.shape
    threads = 256
    fast(_dequant_kernel(layout)[0])[(n, math.ceil(k / threads)), threads, stream](*views, rows, out)


def dequantize_all(layout: str, views, out, stream=0) -> None:
    """out[r, :] = W[r, :] for all rows; out float32 or float16 [n_rows, n_cols]."""
    n, k = out.shape
    threads = 256
    fast(_dequant_kernel(layout)[1])[(n, math.ceil(k / threads)), threads, stream](*views, out)
