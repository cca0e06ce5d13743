"""Fast decode kernels for Q4_0 and Q8_0: aligned repacking, int8 activations, dp4a matvec.

At upload a ggml Q4_0/Q8_0 tensor is split into an aligned quant array (16 or 32 bytes per block,
read as uint64 words) and a float16 scale array (the "R" layouts). The activation row is quantized
to int8 blocks of 32 with one float32 scale each (like ggml's Q8_1, without the sum), so the inner
loop is integer dot products (dp4a) on 8-byte words, coalesced across the warp: lane l reads word
l, l+32, ... of the row.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import dp4a, warp_max, warp_sum

WARP = 32
ROWS_PER_BLOCK = 4  # one warp per output row, 4 warps per block

_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BIAS_78 = np.uint64(0x7878787878787878)
_SIGN_80 = np.uint64(0x8080808080808080)
_FOUR = np.uint64(4)
_THIRTY_TWO = np.uint64(32)


@cuda.jit
def repack_q4_0(raw, raw16, qs, d):
    """raw uint8 [rows, nb*18] -> qs uint8 [rows, nb*16], d float16 [rows, nb] (thread per block)."""
    r = cuda.blockIdx.x
    blk = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if blk >= d.shape[1]:
        return
    d[r, blk] = raw16[r, blk * 9]
    for j in range(16):
        qs[r, blk * 16 + j] = raw[r, blk * 18 + 2 + j]


@cuda.jit
def repack_q8_0(raw, raw16, qs, d):
    """raw uint8 [rows, nb*34] -> qs uint8 [rows, nb*32], d float16 [rows, nb] (thread per block)."""
    r = cuda.blockIdx.x
    blk = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if blk >= d.shape[1]:
        return
    d[r, blk] = raw16[r, blk * 17]
    for j in range(32):
        qs[r, blk * 32 + j] = raw[r, blk * 34 + 2 + j]


@cuda.jit
def quantize_rows_q8(x, xq, xd):
    """x float32 [n, k] -> xq int8 [n, k], xd float32 [n, k/32]: symmetric int8 per block of 32.

    One warp per block of 32 values (lane j holds value j), so the max is a warp reduction."""
    t = cuda.blockIdx.y
    lane = cuda.threadIdx.x % WARP
    blk = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
    valid = blk < xd.shape[1]
    v = x[t, blk * 32 + lane] if valid else np.float32(0.0)
    amax = warp_max(abs(v))
    if valid:
        dd = amax / np.float32(127.0)
        inv = np.float32(0.0) if dd == 0 else np.float32(1.0) / dd
        xq[t, blk * 32 + lane] = np.int8(round(v * inv))
        if lane == 0:
            xd[t, blk] = dd


@cuda.jit(device=True, inline=True)
def _q8_word(wv, xq64, xd, d, t, r, w):
    """Word w (8 int8 quants) of a Q8_0R row times the matching activation word, scaled."""
    blk = w >> 2
    xv = xq64[t, w]
    s = dp4a(wv, xv, 0)
    s = dp4a(wv >> _THIRTY_TWO, xv >> _THIRTY_TWO, s)
    return np.float32(s) * (np.float32(d[r, blk]) * xd[t, blk])


@cuda.jit(device=True, inline=True)
def _q4_word(wv, xq64, xd, d, t, r, w):
    """Word w (16 nibbles) of a Q4_0R row: low nibbles are elements 8k..8k+7 of block w//2
    (k = w % 2), high nibbles 16+8k..; q - 8 as signed bytes without carries between bytes."""
    blk = w >> 1
    k = w & 1
    lo = ((wv & _LOW_NIBBLES) + _BIAS_78) ^ _SIGN_80
    hi = (((wv >> _FOUR) & _LOW_NIBBLES) + _BIAS_78) ^ _SIGN_80
    xlo = xq64[t, blk * 4 + k]
    xhi = xq64[t, blk * 4 + 2 + k]
    s = dp4a(lo, xlo, 0)
    s = dp4a(lo >> _THIRTY_TWO, xlo >> _THIRTY_TWO, s)
    s = dp4a(hi, xhi, s)
    s = dp4a(hi >> _THIRTY_TWO, xhi >> _THIRTY_TWO, s)
    return np.float32(s) * (np.float32(d[r, blk]) * xd[t, blk])


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


def repack(raw, ggml_name: str, n_rows: int, n_cols: int, stream=0):
    """Split a device uint8 [n_rows, row_bytes] Q4_0/Q8_0 upload into (qs uint8, d float16) arrays."""
    nb = n_cols // 32
    bytes_per_block = 16 if ggml_name == "Q4_0" else 32
    qs = cuda.device_array((n_rows, nb * bytes_per_block), dtype=np.uint8, stream=stream)
    d = cuda.device_array((n_rows, nb), dtype=np.float16, stream=stream)
    raw16 = raw.view(np.float16)
    kernel = repack_q4_0 if ggml_name == "Q4_0" else repack_q8_0
    threads = 128
    kernel[(n_rows, math.ceil(nb / threads)), threads, stream](raw, raw16, qs, d)
    return qs, d


def activation_buffers(n: int, k: int, stream=0):
    """Device (xq64 uint64 [n, k/8], xd float32 [n, k/32]) for `quantize_activations`."""
    return (
        cuda.device_array((n, k // 8), dtype=np.uint64, stream=stream),
        cuda.device_array((n, k // 32), dtype=np.float32, stream=stream),
    )


def quantize_activations(x, xq64, xd, stream=0) -> None:
    """x float32 [n, k] device -> xq64 (int8 blocks as uint64 words), xd (block scales)."""
    n, k = x.shape
    warps = 4
    quantize_rows_q8[(math.ceil(k // 32 / warps), n), warps * WARP, stream](x, xq64.view(np.int8), xd)


def matvec_repacked(ggml_name: str, qs, d, xq64, xd, bias, y, stream=0) -> None:
    """Launch the dp4a matvec for a repacked Q4_0/Q8_0 weight into y float32 [n, rows]."""
    n, rows = y.shape
    kernel = matvec_q4_0r if ggml_name == "Q4_0" else matvec_q8_0r
    has_bias = bias is not None
    kernel[(math.ceil(rows / ROWS_PER_BLOCK), n), ROWS_PER_BLOCK * WARP, stream](
        qs.view(np.uint64), d, xq64, xd, bias if has_bias else y[0], has_bias, y
    )
