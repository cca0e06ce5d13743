"""ggml's soft_max_ext on AVX2+FMA, bit for bit (ops.cpp soft_max_f32 + vec.cpp ggml_vec_soft_max_f32).

Per row: w = x * scale + mask; max over w; e = ggml_v_expf(w - max) in 8-element blocks whose sums,
folded in float32 like tinyBLAS's hsum, are added to a double; the n % 8 tail uses libm expf; then
every e is multiplied by (float)(1.0 / sum). ggml_v_expf is a polynomial on 8 lanes, each lane
independent of the others (the vector only takes a slow branch when some lane is out of range, and
that branch gives in-range lanes the same formula), so it is emulated per element by `expf_avx2`.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from embedkit.kernels.cpu.ggml_exact.f16_matmul import hsum8_tinyblas
from embedkit.kernels.cpu.ggml_exact.scalar import fma32
from embedkit.kernels.cpu.halfbits import bits_to_f32


@intrinsic
def _f32_bits(typingctx, value):
    """The bit pattern of float32 `value` as int32."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.float32)
        return builder.bitcast(v, ir.IntType(32))

    return types.int32(value), codegen


def _c(hexfloat: str) -> np.float32:
    value = float.fromhex(hexfloat)
    assert float(np.float32(value)) == value
    return np.float32(value)


_ROUND = _c("0x1.8p23")
_LOG2E = _c("0x1.715476p+0")
_LN2_HI = _c("0x1.62e4p-1")
_LN2_LO = _c("0x1.7f7d1cp-20")
_P0 = _c("0x1.0e4020p-7")
_P1 = _c("0x1.573e2ep-5")
_P2 = _c("0x1.555e66p-3")
_P3 = _c("0x1.fffdb6p-2")
_P4 = _c("0x1.ffffecp-1")
_ONE_BITS = np.int32(0x3F800000)
_G_BITS = np.int32(-0x7E000000)  # 0x82000000 as int32
_S1_BITS = np.int32(0x7F000000)


@njit(cache=True, inline="always")
def expf_avx2(x):
    """One lane of ggml_v_expf(__m256) (vec.h, AVX2+FMA) for a float32 x."""
    x = np.float32(x)
    z = fma32(x, _LOG2E, _ROUND)
    n = z - _ROUND
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = _f32_bits(z) << np.int32(23)
    k = bits_to_f32(e + _ONE_BITS)
    u = b * b
    j = fma32(fma32(fma32(_P0, b, _P1), u, fma32(_P2, b, _P3)), u, _P4 * b)
    an = abs(n)
    if not an > np.float32(126.0):
        return fma32(j, k, k)
    g = _G_BITS if n <= np.float32(0.0) else np.int32(0)
    s1 = bits_to_f32(g + _S1_BITS)
    if an > np.float32(192.0):
        return s1 * s1
    s2 = bits_to_f32(e - g)
    return fma32(s2, j, s2) * s1


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
            y[yo + b + lane] = expf_avx2(x[xo + b + lane] - mx)
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
