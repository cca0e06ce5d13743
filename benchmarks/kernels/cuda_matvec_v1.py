"""First-generation CUDA decode matvecs for repacked Q4_0/Q8_0 (one warp per output row, one matrix a launch),
kept for comparison: `benchmarks/bench_gpu.py` times them beside the production kernels
(`embedkit.kernels.cuda.quant_fast.matvec_multi`, which replaced them in the engine). Same arithmetic as the
single-row production kernel on the same repacked layout and int8 activations.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_sum
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.quant_fast import ROWS_PER_BLOCK, WARP, _q4_word, _q8_word


@cuda.jit
def matvec_q8_0r(qs64, d, xq64, xd, bias, has_bias, y):
    """y[t, r] = sum_k W[r, k] x[t, k] (+ bias[r]); qs64 uint64 [rows, nb*4], xq64 uint64 [n, nb*4]."""
    lane = cuda.threadIdx.x % WARP
    r = cuda.blockIdx.x * ROWS_PER_BLOCK + cuda.threadIdx.x // WARP
    t = cuda.blockIdx.y
    n_words = qs64.shape[1] if r < y.shape[1] else 0
    acc = np.float32(0.0)
    w = lane
    # four words per lane per trip: four independent 8-byte loads in flight
    while w + 3 * WARP < n_words:
        w0 = qs64[r, w]
        w1 = qs64[r, w + WARP]
        w2 = qs64[r, w + 2 * WARP]
        w3 = qs64[r, w + 3 * WARP]
        acc += _q8_word(w0, xq64, xd, d, t, r, w)
        acc += _q8_word(w1, xq64, xd, d, t, r, w + WARP)
        acc += _q8_word(w2, xq64, xd, d, t, r, w + 2 * WARP)
        acc += _q8_word(w3, xq64, xd, d, t, r, w + 3 * WARP)
        w += 4 * WARP
    while w < n_words:
        acc += _q8_word(qs64[r, w], xq64, xd, d, t, r, w)
        w += WARP
    acc = warp_sum(acc)
    if lane == 0 and r < y.shape[1]:
        if has_bias:
            acc += bias[r]
        y[t, r] = acc


@cuda.jit
def matvec_q4_0r(qs64, d, xq64, xd, bias, has_bias, y):
    """y[t, r] = sum_k W[r, k] x[t, k] (+ bias[r]); qs64 uint64 [rows, nb*2], xq64 uint64 [n, nb*4]."""
    lane = cuda.threadIdx.x % WARP
    r = cuda.blockIdx.x * ROWS_PER_BLOCK + cuda.threadIdx.x // WARP
    t = cuda.blockIdx.y
    n_words = qs64.shape[1] if r < y.shape[1] else 0
    acc = np.float32(0.0)
    w = lane
    # four words per lane per trip: four independent 8-byte loads in flight
    while w + 3 * WARP < n_words:
        w0 = qs64[r, w]
        w1 = qs64[r, w + WARP]
        w2 = qs64[r, w + 2 * WARP]
        w3 = qs64[r, w + 3 * WARP]
        acc += _q4_word(w0, xq64, xd, d, t, r, w)
        acc += _q4_word(w1, xq64, xd, d, t, r, w + WARP)
        acc += _q4_word(w2, xq64, xd, d, t, r, w + 2 * WARP)
        acc += _q4_word(w3, xq64, xd, d, t, r, w + 3 * WARP)
        w += 4 * WARP
    while w < n_words:
        acc += _q4_word(qs64[r, w], xq64, xd, d, t, r, w)
        w += WARP
    acc = warp_sum(acc)
    if lane == 0 and r < y.shape[1]:
        if has_bias:
            acc += bias[r]
        y[t, r] = acc



def matvec_repacked(ggml_name: str, qs, d, xq64, xd, bias, y, stream=0) -> None:
    """Launch the dp4a matvec for a repacked Q4_0/Q8_0 weight into y float32 [n, rows]."""
    n, rows = y.shape
    kernel = matvec_q4_0r if ggml_name == "Q4_0" else matvec_q8_0r
    has_bias = bias is not None
    fast(kernel)[(math.ceil(rows / ROWS_PER_BLOCK), n), ROWS_PER_BLOCK * WARP, stream](
        qs.view(np.uint64), d, xq64, xd, bias if has_bias else y[0], has_bias, y
    )
