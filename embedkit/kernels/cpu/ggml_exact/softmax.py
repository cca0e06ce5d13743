"""ggml's soft_max_ext on AVX2+FMA, bit for bit (ops.cpp soft_max_f32 + vec.cpp ggml_vec_soft_max_f32).

Per row: w = x * scale + mask; max over w; e = ggml_v_expf(w - max) in 8-element blocks whose sums,
folded in float32 like tinyBLAS's hsum, are added to a double; the n % 8 tail uses libm expf; then
every e is multiplied by (float)(1.0 / sum). ggml_v_expf is a polynomial on 8 lanes, each lane
independent of the others (the vector only takes a slow branch when some lane is out of range, and
that branch gives in-range lanes the same formula), so it is emulated per element by `expf.v_expf`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.ggml_exact.expf import v_expf
from embedkit.kernels.cpu.ggml_exact.f16_matmul import hsum8_tinyblas


@njit(cache=True)
def vec_soft_max(y, yo, x, xo, n, mx, lo, hi):
    """ggml_vec_soft_max_f32: y[yo+i] = exp(x[xo+i] - mx) for i < n; returns the double sum.

    Only the 8-blocks overlapping [lo, hi) are evaluated; every other element must be -inf (a masked
    score), whose exponential ggml computes as exactly 0 and which adds nothing to the sum.
    """
    total = 0.0
    n8 = n & ~7
    b_lo = lo & ~7
    b_hi = min(n8, (hi + 7) & ~7)
    for i in range(0, b_lo):
        y[yo + i] = np.float32(0.0)
    for i in range(b_hi, n8):
        y[yo + i] = np.float32(0.0)
    for b in range(b_lo, b_hi, 8):
        for lane in range(8):
            y[yo + b + lane] = v_expf(x[xo + b + lane] - mx)
        o = yo + b
        total += np.float64(hsum8_tinyblas(y[o], y[o + 1], y[o + 2], y[o + 3], y[o + 4], y[o + 5], y[o + 6], y[o + 7]))
    for i in range(n8, n):
        val = np.float32(math.exp(np.float32(x[xo + i] - mx)))
        total += np.float64(val)
        y[yo + i] = val
    return total


@njit(cache=True)
def soft_max_row(y, yo, x, xo, n, scale, lo, hi):
    """One row of soft_max_ext(x, mask, scale) whose mask is 0 on [lo, hi) and -inf elsewhere -> y.

    x[xo:xo+n] is only read on [lo, hi); y gets the probabilities (exact zeros where masked).
    """
    mx = -np.inf
    for i in range(lo, hi):
        w = x[xo + i] * scale + np.float32(0.0)
        y[yo + i] = w
        if w > mx:
            mx = w
    mx = np.float32(mx)
    for i in range(lo & ~7, lo):
        y[yo + i] = -np.inf
    for i in range(hi, min(n, (hi + 7) & ~7)):
        y[yo + i] = -np.inf
    for i in range(n & ~7, n):
        if i < lo or i >= hi:
            y[yo + i] = -np.inf
    total = vec_soft_max(y, yo, y, yo, n, mx, lo, hi)
    inv = np.float32(1.0 / total)
    for i in range(n):
        y[yo + i] = y[yo + i] * inv


@njit(cache=True, parallel=True)
def soft_max_ext(x, scale, lo, hi):
    """soft_max_ext over rows x [rows, n] with a 0 / -inf mask given per row as the kept range [lo[r], hi[r])."""
    rows, n = x.shape
    out = np.empty_like(x)
    xf = x.ravel()
    of = out.ravel()
    s = np.float32(scale)
    for r in prange(rows):
        soft_max_row(of, r * n, xf, r * n, n, s, lo[r], hi[r])
    return out
