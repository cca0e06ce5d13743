"""Decode matvecs for the 32-element quants with a min or a fifth bit (Q4_1, Q5_0, Q5_1) on int8
activation blocks, with dp4a.

Q4_0 and Q8_0 are repacked at upload (`quant_fast`); these three stay in their GGUF bytes (20, 22 and
24 bytes a block, so 4-, 2- and 8-byte aligned) and a lane takes whole blocks: block l, l + 32, ... of
its warp's rows, read as uint32 (Q4_1, Q5_1) or uint16 (Q5_0) words, so a warp's loads sweep 32
consecutive blocks. The activations come as int8 blocks of 32 with a float32 scale each
(`quant_fast.quantize_activations`, ggml's Q8_1 without the stored sum); a block's sum of quants,
needed by the min (Q4_1, Q5_1) and the -16 offset (Q5_0), is one more dp4a per word.

Arithmetic: for a weight block with scale d (and min m) and an activation block (xq, xd),
xd * (d * sum(q * xq) + m * sum(xq)), as ggml's `vec_dot_q4_1_q8_1` and friends.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import dp4a, start_warp_rows, store_warp_rows, u16_pair, warp_rows
from embedkit.kernels.cuda.launch import fast
from embedkit.quant import names_with
from embedkit.quant.registry import CUDA_LEGACY

WARP = 32
WARPS_PER_BLOCK = 4
ROWS_PER_WARP = 2
LAYOUTS = names_with(CUDA_LEGACY)  # ("Q4_1", "Q5_0", "Q5_1"); a layout's index selects its decode in the kernel

_ONES = np.int32(0x01010101)
_NIBBLES = np.uint32(0x0F0F0F0F)


@cuda.jit(device=True, inline=True)
def _xword(xq64, t, blk, k):
    """int32 word k (quants 4k .. 4k + 3) of activation block blk of token t."""
    return np.int32((xq64[t, blk * 4 + k // 2] >> np.uint64(32 * (k % 2))) & np.uint64(0xFFFFFFFF))


@cuda.jit(device=True, inline=True)
def _fifth_bits(qh, shift):
    """Bits shift .. shift + 3 of qh, each moved to bit 4 of its own byte (the fifth bit of four quants)."""
    b = (qh >> np.uint32(shift)) & np.uint32(0xF)
    return (
        ((b & np.uint32(1)) << np.uint32(4))
        | ((b & np.uint32(2)) << np.uint32(11))
        | ((b & np.uint32(4)) << np.uint32(18))
        | ((b & np.uint32(8)) << np.uint32(25))
    )


@cuda.jit(device=True, inline=True)
def _block_dot(layout_id, w, b, r, blk, xv):
    """(d, m, sum(q * xq)) of weight block blk of row r against the activation words xv[0..7].

    layout_id 0: Q4_1 (w uint32 view, 5 words a block), 1: Q5_0 (uint16 view, 11 halves a block,
    quants 0-31 without the -16 offset), 2: Q5_1 (uint32 view, 6 words a block)."""
    dot = np.int32(0)
    if layout_id == 0:
        d = np.float32(b[r, blk * 10])
        m = np.float32(b[r, blk * 10 + 1])
        for k in range(4):
            q = np.uint32(w[r, blk * 5 + 1 + k])
            dot = dp4a(np.int32(q & _NIBBLES), xv[k], dot)
            dot = dp4a(np.int32((q >> np.uint32(4)) & _NIBBLES), xv[4 + k], dot)
    elif layout_id == 1:
        d = np.float32(b[r, blk * 11])
        m = np.float32(0.0)
        qh = u16_pair(w, r, blk * 11 + 1)
        for k in range(4):
            q = u16_pair(w, r, blk * 11 + 3 + 2 * k)
            dot = dp4a(np.int32((q & _NIBBLES) | _fifth_bits(qh, 4 * k)), xv[k], dot)
            dot = dp4a(np.int32(((q >> np.uint32(4)) & _NIBBLES) | _fifth_bits(qh, 16 + 4 * k)), xv[4 + k], dot)
    else:
        d = np.float32(b[r, blk * 12])
        m = np.float32(b[r, blk * 12 + 1])
        qh = np.uint32(w[r, blk * 6 + 1])
        for k in range(4):
            q = np.uint32(w[r, blk * 6 + 2 + k])
            dot = dp4a(np.int32((q & _NIBBLES) | _fifth_bits(qh, 4 * k)), xv[k], dot)
            dot = dp4a(np.int32(((q >> np.uint32(4)) & _NIBBLES) | _fifth_bits(qh, 16 + 4 * k)), xv[4 + k], dot)
    return d, m, dot


def _make(layout_id: int, R: int):
    @cuda.jit
    def matvec_legacy_q8(w, b, xq64, xd, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias), R rows a warp, a lane per weight block (see the module)."""
        lane, r0, t, rows = warp_rows(R, y)
        nb = xd.shape[1] if r0 < rows else 0
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        xv = cuda.local.array(8, dtype=np.int32)
        start_warp_rows(acc, rr, r0, rows)
        for blk in range(lane, nb, WARP):
            xsum = np.int32(0)
            for k in range(8):
                xv[k] = _xword(xq64, t, blk, k)
                xsum = dp4a(xv[k], _ONES, xsum)
            fx = xd[t, blk]
            for i in range(R):
                d, m, dot = _block_dot(layout_id, w, b, rr[i], blk, xv)
                if layout_id == 1:
                    dot -= 16 * xsum
                acc[i] += fx * (d * np.float32(dot) + m * np.float32(xsum))
        store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_legacy_q8


_KERNELS: dict = {}


def matvec_q8(layout: str, views, xq64, xd, bias, y, stream=0) -> None:
    """y = x @ W.T (+ bias) for a Q4_1, Q5_0 or Q5_1 matrix held as `views` (uint8, float16, ...) with x
    given as int8 blocks of 32 (`quant_fast.quantize_activations`)."""
    layout_id = LAYOUTS.index(layout)
    key = (layout_id, ROWS_PER_WARP)
    if key not in _KERNELS:
        _KERNELS[key] = _make(layout_id, ROWS_PER_WARP)
    n, rows = y.shape
    has_bias = bias is not None
    words = views[0].view(np.uint16 if layout == "Q5_0" else np.uint32)
    warps = math.ceil(rows / ROWS_PER_WARP)
    fast(_KERNELS[key])[(math.ceil(warps / WARPS_PER_BLOCK), n), WARPS_PER_BLOCK * WARP, stream](
        words, views[1], xq64, xd, bias if has_bias else y[0], has_bias, y
    )
