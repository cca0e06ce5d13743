"""The scale searches of llama.cpp's reference K-quant quantizers (ggml-quants.c, used when no importance
matrix is given), in float32; `kernels.cpu.quantizers` builds Q4_K and Q6_K blocks from them.

- `make_qkx2_quants`: a weighted least-squares fit of (scale, min) over a small grid of inverse scales.
- `make_qx_quants`: a signed scale searched around amax/nmax, weights x^2.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.kernels.cpu.halfbits import f16_to_f32, f32_to_f16

GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, inline="always")
def nearest_int(v):
    """Round to nearest, ties to even (ggml's nearest_int)."""
    return np.int32(np.rint(v))


@njit(cache=True, inline="always")
def f16_round(v):
    """v rounded to float16 and back (the value a stored f16 scale reads as)."""
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
