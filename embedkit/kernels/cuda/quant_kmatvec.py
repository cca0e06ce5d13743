"""Decode matvecs for the K-quants Q4_K and Q6_K: a warp takes ROWS_PER_WARP output rows and two or four
256-element super-blocks of each per step, the activations loaded once for all of them.

The default kernels (`matvec_q8`) take the activations as int8 blocks of 32 with a float32 scale each
(`quant_fast.quantize_activations`, as ggml's CUDA backend quantizes them to Q8_1) and multiply with
dp4a: Q4_K lanes read two aligned uint64 words of quants (32 weights) and the block's two header words
and unpack the 6-bit scales without branching; Q6_K blocks (210 bytes, only 2-byte aligned) are read as
uint16 pairs, a lane's eight weights of a quarter to two dp4a. The min / the -32 offset use the activation blocks'
sums. On the H100 they run at 2-3x the float32-activation kernels below (benchmarks/RESULTS.md), which
stay for measurements (EMBEDKIT_KMV_INT8=0): eight weights a lane from bytes it loads itself, float32
activations, the same arithmetic as ggml's `dequantize_row_q4_K` / `dequantize_row_q6_K` followed by a
float32 dot product.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import dot8, dp4a, start_warp_rows, store_warp_rows, u16_pair, warp_rows
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.quant_elem import q4_k_scale_min
from embedkit.quant import names_with
from embedkit.quant.registry import CUDA_KMATVEC

WARP = 32
WARPS_PER_BLOCK = 4
Q4_K_BYTES = 144  # d, dmin (float16), scales[12], qs[128]
Q6_K_BYTES = 210  # ql[128], qh[64], scales[16] (int8), d (float16)
Q4_K_WORDS = Q4_K_BYTES // 8
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_ONES64 = np.uint64(0x0101010101010101)
_THIRTY_TWO = np.uint64(32)
_FOUR = np.uint64(4)


def _make_q4_k(R: int):
    @cuda.jit
    def matvec_q4_k(a, b, x, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q4_K rows (a uint8 [rows, row_bytes], b its float16 view),
        R rows per warp sharing the activation loads.

        Lane l takes 64-element chunk l // 8 of each super-block and, in it, the four low-nibble weights
        at 4 (l % 8) .. +3 (sub-block 2 chunk) and the four high-nibble ones 32 further (sub-block
        2 chunk + 1)."""
        lane, r0, t, rows = warp_rows(R, y)
        n_blocks = x.shape[1] // 256 if r0 < rows else 0
        chunk = lane // 8
        k0 = (lane % 8) * 4
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        start_warp_rows(acc, rr, r0, rows)
        xl = cuda.local.array(4, dtype=np.float32)
        xh = cuda.local.array(4, dtype=np.float32)
        for blk in range(n_blocks):
            x0 = blk * 256 + chunk * 64 + k0
            sum_lo = np.float32(0.0)
            sum_hi = np.float32(0.0)
            for k in range(4):
                xl[k] = x[t, x0 + k]
                xh[k] = x[t, x0 + 32 + k]
                sum_lo += xl[k]
                sum_hi += xh[k]
            base = blk * Q4_K_BYTES
            for i in range(R):
                r = rr[i]
                d = np.float32(b[r, blk * (Q4_K_BYTES // 2)])
                dmin = np.float32(b[r, blk * (Q4_K_BYTES // 2) + 1])
                sc_lo, mn_lo = q4_k_scale_min(a, r, base + 4, 2 * chunk)
                sc_hi, mn_hi = q4_k_scale_min(a, r, base + 4, 2 * chunk + 1)
                q0 = base + 16 + chunk * 32 + k0
                dot_lo = np.float32(0.0)
                dot_hi = np.float32(0.0)
                for k in range(4):
                    q = np.int32(a[r, q0 + k])
                    dot_lo += np.float32(q & 15) * xl[k]
                    dot_hi += np.float32(q >> 4) * xh[k]
                acc[i] += d * (np.float32(sc_lo) * dot_lo + np.float32(sc_hi) * dot_hi)
                acc[i] -= dmin * (np.float32(mn_lo) * sum_lo + np.float32(mn_hi) * sum_hi)
        store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q4_k


@cuda.jit(device=True, inline=True)
def _byte(word, k):
    return np.int32((word >> np.uint64(8 * k)) & np.uint64(0xFF))


@cuda.jit(device=True, inline=True)
def _scale_min_words(s0, s1, s2, sub):
    """(scale, min) of Q4_K sub-block `sub` (0-7) from its packed scale bytes 0-3, 4-7 and 8-11 (s0, s1,
    s2), as `quant_elem.q4_k_scale_min` reads them, without a branch (lanes of a warp differ in `sub`)."""
    m = sub & 3
    b0 = _byte(s0, m)
    b1 = _byte(s1, m)
    b2 = _byte(s2, m)
    high = sub >= 4
    sc = ((b2 & 15) | ((b0 >> 6) << 4)) if high else (b0 & 63)
    mn = ((b2 >> 4) | ((b1 >> 6) << 4)) if high else (b1 & 63)
    return sc, mn


@cuda.jit(device=True, inline=True)
def _sum8(xv):
    """Sum of the eight signed bytes of a uint64 word."""
    return dot8(xv, _ONES64, 0)


def _make_q4_k_q8(R: int):
    @cuda.jit
    def matvec_q4_k_q8(q64, b, xq64, xd, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q4_K rows (q64 the uint64 view [rows, nb*18], b the float16
        view) and x as int8 blocks of 32 (xq64 uint64 words, xd float32 scales), R rows a warp.

        The warp takes four super-blocks a step: lane l reads quant words 2 (l % 8) and 2 (l % 8) + 1 of
        super-block l // 8, i.e. sixteen low nibbles of sub-block 2j and sixteen high nibbles of
        sub-block 2j + 1 (j = (l % 8) // 2); the eight lanes of a super-block read its 128 quant bytes
        in one coalesced sweep. The min term uses the int8 activations' block sums, as ggml's Q8_K
        bsums do."""
        lane, r0, t, rows = warp_rows(R, y)
        nb = xd.shape[1] // 8
        n_steps = (nb + 3) // 4 if r0 < rows else 0
        w = 2 * (lane % 8)
        j = w // 4
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        start_warp_rows(acc, rr, r0, rows)
        for step in range(n_steps):
            blk = 4 * step + lane // 8
            if blk < nb:
                xw = blk * 32 + 8 * j + w % 4
                xa = xq64[t, xw]
                xb = xq64[t, xw + 1]
                xc = xq64[t, xw + 4]
                xe = xq64[t, xw + 5]
                f_lo = xd[t, blk * 8 + 2 * j]
                f_hi = xd[t, blk * 8 + 2 * j + 1]
                s_lo = np.float32(_sum8(xa) + _sum8(xb)) * f_lo
                s_hi = np.float32(_sum8(xc) + _sum8(xe)) * f_hi
                for i in range(R):
                    r = rr[i]
                    base = blk * Q4_K_WORDS
                    wa = q64[r, base + 2 + w]
                    wb = q64[r, base + 3 + w]
                    h0 = q64[r, base]
                    h1 = q64[r, base + 1]
                    s0 = h0 >> _THIRTY_TWO
                    sc_lo, mn_lo = _scale_min_words(s0, h1, h1 >> _THIRTY_TWO, 2 * j)
                    sc_hi, mn_hi = _scale_min_words(s0, h1, h1 >> _THIRTY_TWO, 2 * j + 1)
                    dot_lo = dot8(wa & _LOW_NIBBLES, xa, 0) + dot8(wb & _LOW_NIBBLES, xb, 0)
                    dot_hi = dot8((wa >> _FOUR) & _LOW_NIBBLES, xc, 0) + dot8((wb >> _FOUR) & _LOW_NIBBLES, xe, 0)
                    d = np.float32(b[r, blk * (Q4_K_BYTES // 2)])
                    dmin = np.float32(b[r, blk * (Q4_K_BYTES // 2) + 1])
                    acc[i] += d * (np.float32(sc_lo * dot_lo) * f_lo + np.float32(sc_hi * dot_hi) * f_hi)
                    acc[i] -= dmin * (np.float32(mn_lo) * s_lo + np.float32(mn_hi) * s_hi)
        store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q4_k_q8


def _make_q6_k(R: int):
    @cuda.jit
    def matvec_q6_k(a, b, x, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q6_K rows (a uint8 [rows, row_bytes], b its float16 view),
        R rows per warp sharing the activation loads.

        Lane l takes half l // 16 of each super-block and, in it, positions 2 (l % 16) and 2 (l % 16) + 1
        of all four 32-element quarters: eight weights from two ql pairs and one qh pair."""
        lane, r0, t, rows = warp_rows(R, y)
        n_blocks = x.shape[1] // 256 if r0 < rows else 0
        half = lane // 16
        l0 = (lane % 16) * 2
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        start_warp_rows(acc, rr, r0, rows)
        xv = cuda.local.array((4, 2), dtype=np.float32)
        for blk in range(n_blocks):
            xb = blk * 256 + half * 128
            for quarter in range(4):
                for u in range(2):
                    xv[quarter, u] = x[t, xb + quarter * 32 + l0 + u]
            base = blk * Q6_K_BYTES
            ql = base + half * 64
            qh = base + 128 + half * 32
            sc = base + 192 + half * 8
            for i in range(R):
                r = rr[i]
                d = np.float32(b[r, blk * (Q6_K_BYTES // 2) + 104])  # d sits at byte 208 of the block
                for quarter in range(4):
                    s = np.int32(a[r, sc + l0 // 16 + 2 * quarter])
                    if s >= 128:
                        s -= 256
                    dot = np.float32(0.0)
                    for u in range(2):
                        l = l0 + u
                        lo = np.int32(a[r, ql + l + (32 if quarter % 2 == 1 else 0)])
                        lo = (lo & 0xF) if quarter < 2 else (lo >> 4)
                        hi = (np.int32(a[r, qh + l]) >> (2 * quarter)) & 3
                        dot += np.float32((lo | (hi << 4)) - 32) * xv[quarter, u]
                    acc[i] += d * np.float32(s) * dot
        store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q6_k


_LOW_2 = np.uint32(0x03030303)
_LOW_4 = np.uint32(0x0F0F0F0F)


@cuda.jit(device=True, inline=True)
def _q6_quarter(lo, hi, shift_lo, shift_hi):
    """Four 6-bit Q6_K quants (0-63) as the bytes of one int32: low nibbles from `lo`, two high bits."""
    return np.int32(((lo >> shift_lo) & _LOW_4) | (((hi >> shift_hi) & _LOW_2) << np.uint32(4)))


def _make_q6_k_q8(R: int):
    @cuda.jit
    def matvec_q6_k_q8(h, a, b, xq64, xd, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q6_K rows (h the uint16 view [rows, nb*105], a uint8, b
        float16; a 210-byte block is only 2-byte aligned) and x as int8 blocks of 32, R rows a warp.

        The warp takes four super-blocks a step: lane l takes half (l % 8) // 4 of super-block l // 8
        and, in it, positions 8 (l % 4) .. +7 of all four 32-element quarters: 32 weights from eight
        bytes each of the low and high ql runs and of qh, a quarter's eight to two dp4a against one
        activation word. The -32 offset comes from the activation quarters' sums, taken once a step."""
        lane, r0, t, rows = warp_rows(R, y)
        nb = xd.shape[1] // 8
        n_steps = (nb + 3) // 4 if r0 < rows else 0
        half = (lane % 8) // 4
        l0 = 8 * (lane % 4)
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        xv = cuda.local.array(4, dtype=np.uint64)
        x32 = cuda.local.array(4, dtype=np.int32)  # 32 x the sum of the lane's eight quants of a quarter
        fx = cuda.local.array(4, dtype=np.float32)
        start_warp_rows(acc, rr, r0, rows)
        for step in range(n_steps):
            blk = 4 * step + lane // 8
            if blk < nb:
                xb = blk * 8 + half * 4  # activation block of quarter 0
                for q in range(4):
                    xv[q] = xq64[t, (xb + q) * 4 + l0 // 8]
                    x32[q] = 32 * _sum8(xv[q])
                    fx[q] = xd[t, xb + q]
                e = blk * (Q6_K_BYTES // 2)  # uint16 index of the block
                ka = e + (half * 64 + l0) // 2
                kb = ka + 16
                kh = e + (128 + half * 32 + l0) // 2
                sc = blk * Q6_K_BYTES + 192 + half * 8 + l0 // 16
                for i in range(R):
                    r = rr[i]
                    lo_a0 = u16_pair(h, r, ka)
                    lo_a1 = u16_pair(h, r, ka + 2)
                    lo_b0 = u16_pair(h, r, kb)
                    lo_b1 = u16_pair(h, r, kb + 2)
                    hi0 = u16_pair(h, r, kh)
                    hi1 = u16_pair(h, r, kh + 2)
                    acc_q = np.float32(0.0)
                    for q in range(4):
                        lo0 = lo_a0 if q % 2 == 0 else lo_b0
                        lo1 = lo_a1 if q % 2 == 0 else lo_b1
                        shift_lo = np.uint32(4 * (q // 2))
                        shift_hi = np.uint32(2 * q)
                        dot = dp4a(_q6_quarter(lo0, hi0, shift_lo, shift_hi), xv[q], 0)
                        dot = dp4a(_q6_quarter(lo1, hi1, shift_lo, shift_hi), xv[q] >> _THIRTY_TWO, dot)
                        s = np.int32(a[r, sc + 2 * q])
                        if s >= 128:
                            s -= 256
                        acc_q += np.float32(s * (dot - x32[q])) * fx[q]
                    acc[i] += np.float32(b[r, e + 104]) * acc_q  # d sits at byte 208 of the block
        store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q6_k_q8


# rows per warp: two measured best on the H100 (2026-11-26, kernel-only, 14336 x 4096 and 4096 x 14336, int8
# kernels: Q4_K 25-27 us with one, 18-19 with two, 21 with four; Q6_K 41-44, 28-29, 30-31; the float32 ones
# likewise); EMBEDKIT_KMV_ROWS overrides it for measurements
ROWS_PER_WARP = int(os.environ.get("EMBEDKIT_KMV_ROWS", "2"))
_KERNELS: dict = {}


def _kernel(layout: str):
    key = (layout, ROWS_PER_WARP)
    if key not in _KERNELS:
        make = {"Q4_K": _make_q4_k, "Q6_K": _make_q6_k, "Q4_K_Q8": _make_q4_k_q8, "Q6_K_Q8": _make_q6_k_q8}[layout]
        _KERNELS[key] = make(ROWS_PER_WARP)
    return _KERNELS[key]


KMATVECS = names_with(CUDA_KMATVEC)  # ("Q4_K", "Q6_K")
# layouts whose decode matvec takes int8 activation blocks (`matvec_q8`); EMBEDKIT_KMV_INT8=0 keeps float32
# activations (the kernels above), for measurements
INT8_KMATVECS = KMATVECS if os.environ.get("EMBEDKIT_KMV_INT8", "1") != "0" else ()


def matvec(layout: str, views, x, bias, y, stream=0) -> None:
    """y = x @ W.T (+ bias) for a Q4_K or Q6_K matrix held as `views` (uint8, float16, float32) and
    x float32 [n, k] with k a multiple of 256."""
    n, rows = y.shape
    has_bias = bias is not None
    warps = math.ceil(rows / ROWS_PER_WARP)
    fast(_kernel(layout))[(math.ceil(warps / WARPS_PER_BLOCK), n), WARPS_PER_BLOCK * WARP, stream](
        views[0], views[1], x, bias if has_bias else y[0], has_bias, y
    )


def matvec_q8(layout: str, views, xq64, xd, bias, y, stream=0) -> None:
    """y = x @ W.T (+ bias) for a Q4_K or Q6_K matrix held as `views`, with x given as int8 blocks of 32
    (`quant_fast.quantize_activations`): the dp4a kernels."""
    n, rows = y.shape
    has_bias = bias is not None
    warps = math.ceil(rows / ROWS_PER_WARP)
    a, b = views[0], views[1]
    words = (a.view(np.uint64),) if layout == "Q4_K" else (a.view(np.uint16), a)
    fast(_kernel(layout + "_Q8"))[(math.ceil(warps / WARPS_PER_BLOCK), n), WARPS_PER_BLOCK * WARP, stream](
        *words, b, xq64, xd, bias if has_bias else y[0], has_bias, y
    )
