"""Decode matvecs for the K-quants Q4_K and Q6_K: a warp takes ROWS_PER_WARP output rows and one
256-element super-block of each per step, the activations loaded once for all of them.

The element-wise kernel of `quant_generic` decodes every weight on its own (five or more loads and
the scale unpacking per element: 7-10% of the H100's bandwidth). Here each lane takes eight weights of
the super-block from four (Q4_K) or six (Q6_K) bytes it loads itself, with the super-block's scales
read once per lane, and multiplies them with float32 activations; the warp's partial sums meet in one
reduction per row. Same arithmetic as ggml's `dequantize_row_q4_K` / `dequantize_row_q6_K` followed by
a float32 dot product, in another summation order.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_sum
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.quant_elem import q4_k_scale_min

WARP = 32
WARPS_PER_BLOCK = 4
Q4_K_BYTES = 144  # d, dmin (float16), scales[12], qs[128]
Q6_K_BYTES = 210  # ql[128], qh[64], scales[16] (int8), d (float16)


@cuda.jit(device=True, inline=True)
def _store_rows(acc, r0, rows, lane, t, has_bias, bias, y):
    """Reduce each row's lane sums over the warp and write y[t, r0 + i] (+ bias) for rows that exist."""
    for i in range(acc.shape[0]):
        v = warp_sum(acc[i])
        r = r0 + i
        if lane == 0 and r < rows:
            if has_bias:
                v += bias[r]
            y[t, r] = v


def _make_q4_k(R: int):
    @cuda.jit
    def matvec_q4_k(a, b, x, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q4_K rows (a uint8 [rows, row_bytes], b its float16 view),
        R rows per warp sharing the activation loads.

        Lane l takes 64-element chunk l // 8 of each super-block and, in it, the four low-nibble weights
        at 4 (l % 8) .. +3 (sub-block 2 chunk) and the four high-nibble ones 32 further (sub-block
        2 chunk + 1)."""
        lane = cuda.threadIdx.x % WARP
        r0 = (cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP) * R
        t = cuda.blockIdx.y
        rows = y.shape[1]
        n_blocks = x.shape[1] // 256 if r0 < rows else 0
        chunk = lane // 8
        k0 = (lane % 8) * 4
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        for i in range(R):
            acc[i] = np.float32(0.0)
            rr[i] = min(r0 + i, rows - 1)  # rows past the end repeat the last one (not written)
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
        _store_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q4_k


def _make_q6_k(R: int):
    @cuda.jit
    def matvec_q6_k(a, b, x, bias, has_bias, y):
        """y[t, r] = W[r] . x[t] (+ bias) for Q6_K rows (a uint8 [rows, row_bytes], b its float16 view),
        R rows per warp sharing the activation loads.

        Lane l takes half l // 16 of each super-block and, in it, positions 2 (l % 16) and 2 (l % 16) + 1
        of all four 32-element quarters: eight weights from two ql pairs and one qh pair."""
        lane = cuda.threadIdx.x % WARP
        r0 = (cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP) * R
        t = cuda.blockIdx.y
        rows = y.shape[1]
        n_blocks = x.shape[1] // 256 if r0 < rows else 0
        half = lane // 16
        l0 = (lane % 16) * 2
        acc = cuda.local.array(R, dtype=np.float32)
        rr = cuda.local.array(R, dtype=np.int64)
        for i in range(R):
            acc[i] = np.float32(0.0)
            rr[i] = min(r0 + i, rows - 1)
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
        _store_rows(acc, r0, rows, lane, t, has_bias, bias, y)

    return matvec_q6_k


# rows per warp: two measured best on the H100 (2026-11-26, kernel-only, 14336 x 4096 and 4096 x 14336:
# Q4_K 91-93 us with one, 67-69 with two, 59-74 with four; Q6_K 108-134, 78-86, 90-139); EMBEDKIT_KMV_ROWS
# overrides it for measurements
ROWS_PER_WARP = int(os.environ.get("EMBEDKIT_KMV_ROWS", "2"))
_KERNELS: dict = {}


def _kernel(layout: str):
    key = (layout, ROWS_PER_WARP)
    if key not in _KERNELS:
        _KERNELS[key] = (_make_q4_k if layout == "Q4_K" else _make_q6_k)(ROWS_PER_WARP)
    return _KERNELS[key]


KMATVECS = ("Q4_K", "Q6_K")


def matvec(layout: str, views, x, bias, y, stream=0) -> None:
    """y = x @ W.T (+ bias) for a Q4_K or Q6_K matrix held as `views` (uint8, float16, float32) and
    x float32 [n, k] with k a multiple of 256."""
    n, rows = y.shape
    has_bias = bias is not None
    warps = math.ceil(rows / ROWS_PER_WARP)
    fast(_kernel(layout))[(math.ceil(warps / WARPS_PER_BLOCK), n), WARPS_PER_BLOCK * WARP, stream](
        views[0], views[1], x, bias if has_bias else y[0], has_bias, y
    )
