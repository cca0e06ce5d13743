"""Quantizers for Q4_K and Q6_K: llama.cpp's reference algorithm (`quantize_row_q4_K_ref`,
`quantize_row_q6_K_ref` in ggml-quants.c, used when no importance matrix is given), in float32.

Q4_K: per 32-element sub-block a weighted least-squares fit of (scale, min) over a small grid of
inverse scales (`make_qkx2_quants`), then 6-bit sub-block scales/mins against f16 super-block scales.
Q6_K: per 16-element group a signed scale searched around amax/32 (`make_qx_quants`, weights x^2),
then int8 group scales against one f16 scale.
Signature: `(x float32 [n_rows, n_cols], out uint8 [n_rows, row_bytes])`, parallel over rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import f16_to_f32, f32_to_f16
from embedkit.kernels.cpu.quantize_legacy import store_f16

GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, inline="always")
def nearest_int(v):
    """Round to nearest, ties to even (ggml's nearest_int)."""
    return np.int32(np.rint(v))


@njit(cache=True, inline="always")
def _f16_round(v):
    return f16_to_f32(f32_to_f16(v))


@njit(cache=True)
def make_qkx2_quants(n, nmax, x, xo, weights, L, lo, laux, rmin, rdelta, nstep):
    """Fit x[xo:xo+n] ~ scale * L - min (L in 0..nmax) minimising the weighted squared error.

    Writes L[lo:lo+n]; returns (scale, min) with min >= 0 meaning an offset of -min.
    """
    vmin = x[xo]
    vmax = x[xo]
    sum_w = weights[0]
    sum_x = sum_w * x[xo]
    for i in range(1, n):
        v = x[xo + i]
        if v < vmin:
            vmin = v
        if v > vmax:
            vmax = v
        sum_w += weights[i]
        sum_x += weights[i] * v
    if vmin > np.float32(0.0):
        vmin = np.float32(0.0)
    if vmax == vmin:
        for i in range(n):
            L[lo + i] = 0
        return np.float32(0.0), -vmin
    nmax_f = np.float32(nmax)
    iscale = nmax_f / (vmax - vmin)
    scale = np.float32(1.0) / iscale
    best_mad = np.float32(0.0)
    for i in range(n):
        q = min(nmax, max(0, nearest_int(iscale * (x[xo + i] - vmin))))
        L[lo + i] = q
        diff = scale * np.float32(q) + vmin - x[xo + i]
        best_mad += weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + nmax_f) / (vmax - vmin)
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            q = min(nmax, max(0, nearest_int(iscale * (x[xo + i] - vmin))))
            laux[i] = q
            w = weights[i]
            lf = np.float32(q)
            sum_l += w * lf
            sum_l2 += w * lf * lf
            sum_xl += w * lf * x[xo + i]
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > np.float32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > np.float32(0.0):
                this_min = np.float32(0.0)
                this_scale = sum_xl / sum_l2
            mad = np.float32(0.0)
            for i in range(n):
                diff = this_scale * np.float32(laux[i]) + this_min - x[xo + i]
                mad += weights[i] * (diff * diff)
            if mad < best_mad:
                for i in range(n):
                    L[lo + i] = laux[i]
                best_mad = mad
                scale = this_scale
                vmin = this_min
    return scale, -vmin


@njit(cache=True)
def make_qx_quants(n, nmax, x, xo, L, lo):
    """Signed scale for x[xo:xo+n] ~ scale * (L - nmax), weights x^2, searched over 19 inverse scales."""
    vmax = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax = ax
            vmax = x[xo + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[lo + i] = 0
        return np.float32(0.0)
    nmax_f = np.float32(nmax)
    iscale = -nmax_f / vmax
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        v = x[xo + i]
        q = max(-nmax, min(nmax - 1, nearest_int(iscale * v)))
        L[lo + i] = q + nmax
        w = v * v
        sumlx += w * v * np.float32(q)
        suml2 += w * np.float32(q) * np.float32(q)
    scale = sumlx / suml2
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(nmax_f + np.float32(0.1) * np.float32(step)) / vmax
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(n):
            v = x[xo + i]
            q = max(-nmax, min(nmax - 1, nearest_int(iscale * v)))
            w = v * v
            sumlx += w * v * np.float32(q)
            suml2 += w * np.float32(q) * np.float32(q)
        if suml2 > np.float32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                q = max(-nmax, min(nmax - 1, nearest_int(iscale * x[xo + i])))
                L[lo + i] = q + nmax
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(parallel=True, cache=True)
def quantize_q4_k(x, out):
    """Q4_K rows, as llama.cpp's quantize_row_q4_K_ref."""
    nb = x.shape[1] // 256
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        L = np.zeros(256, dtype=np.int32)
        laux = np.zeros(32, dtype=np.int32)
        weights = np.zeros(32, dtype=np.float32)
        scales = np.zeros(8, dtype=np.float32)
        mins = np.zeros(8, dtype=np.float32)
        for b in range(nb):
            xo = 256 * b
            o = 144 * b
            max_scale = np.float32(0.0)
            max_min = np.float32(0.0)
            for j in range(8):
                sum_x2 = np.float32(0.0)
                for i in range(32):
                    v = src[xo + 32 * j + i]
                    sum_x2 += v * v
                av_x = np.float32(math.sqrt(sum_x2 / np.float32(32.0)))
                for i in range(32):
                    weights[i] = av_x + abs(src[xo + 32 * j + i])
                sc, mn = make_qkx2_quants(
                    32, 15, src, xo + 32 * j, weights, L, 32 * j, laux, np.float32(-1.0), np.float32(0.1), 20
                )
                scales[j] = sc
                mins[j] = mn
                if sc > max_scale:
                    max_scale = sc
                if mn > max_min:
                    max_min = mn
            inv_scale = np.float32(63.0) / max_scale if max_scale > np.float32(0.0) else np.float32(0.0)
            inv_min = np.float32(63.0) / max_min if max_min > np.float32(0.0) else np.float32(0.0)
            for k in range(12):
                dst[o + 4 + k] = 0
            for j in range(8):
                ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
                lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
                if j < 4:
                    dst[o + 4 + j] = ls
                    dst[o + 4 + j + 4] = lm
                else:
                    dst[o + 4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                    dst[o + 4 + j - 4] |= (ls >> 4) << 6
                    dst[o + 4 + j] |= (lm >> 4) << 6
            store_f16(dst, o, max_scale / np.float32(63.0))
            store_f16(dst, o + 2, max_min / np.float32(63.0))
            d_all = _f16_round(max_scale / np.float32(63.0))
            m_all = _f16_round(max_min / np.float32(63.0))
            for j in range(8):
                if j < 4:
                    sc = np.int32(dst[o + 4 + j]) & 63
                    mn = np.int32(dst[o + 4 + j + 4]) & 63
                else:
                    sc = (np.int32(dst[o + 4 + j + 4]) & 0xF) | ((np.int32(dst[o + 4 + j - 4]) >> 6) << 4)
                    mn = (np.int32(dst[o + 4 + j + 4]) >> 4) | ((np.int32(dst[o + 4 + j]) >> 6) << 4)
                d = d_all * np.float32(sc)
                if d == np.float32(0.0):
                    continue
                dm = m_all * np.float32(mn)
                for i in range(32):
                    L[32 * j + i] = max(0, min(15, nearest_int((src[xo + 32 * j + i] + dm) / d)))
            for j in range(4):
                for i in range(32):
                    dst[o + 16 + 32 * j + i] = L[64 * j + i] | (L[64 * j + 32 + i] << 4)


@njit(parallel=True, cache=True)
def quantize_q6_k(x, out):
    """Q6_K rows, as llama.cpp's quantize_row_q6_K_ref."""
    nb = x.shape[1] // 256
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        L = np.zeros(256, dtype=np.int32)
        scales = np.zeros(16, dtype=np.float32)
        for b in range(nb):
            xo = 256 * b
            o = 210 * b
            max_scale = np.float32(0.0)
            max_abs_scale = np.float32(0.0)
            for g in range(16):
                s = make_qx_quants(16, 32, src, xo + 16 * g, L, 16 * g)
                scales[g] = s
                if abs(s) > max_abs_scale:
                    max_abs_scale = abs(s)
                    max_scale = s
            if max_abs_scale < GROUP_MAX_EPS:
                for k in range(210):
                    dst[o + k] = 0
                continue
            iscale = np.float32(-128.0) / max_scale
            store_f16(dst, o + 208, np.float32(1.0) / iscale)
            d_all = _f16_round(np.float32(1.0) / iscale)
            for g in range(16):
                q = min(127, nearest_int(iscale * scales[g]))
                dst[o + 192 + g] = q & 0xFF
                d = d_all * np.float32(np.int8(q))
                if d == np.float32(0.0):
                    continue
                for i in range(16):
                    L[16 * g + i] = max(-32, min(31, nearest_int(src[xo + 16 * g + i] / d))) + 32
            for h in range(2):
                for i in range(32):
                    e = 128 * h + i
                    dst[o + 64 * h + i] = (L[e] & 0xF) | ((L[e + 64] & 0xF) << 4)
                    dst[o + 64 * h + 32 + i] = (L[e + 32] & 0xF) | ((L[e + 96] & 0xF) << 4)
                    dst[o + 128 + 32 * h + i] = (
                        (L[e] >> 4) | ((L[e + 32] >> 4) << 2) | ((L[e + 64] >> 4) << 4) | ((L[e + 96] >> 4) << 6)
                    )
