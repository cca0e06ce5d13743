"""Exact (erf) GELU and LayerNorm on float32 rows, multithreaded (the elementwise steps of a BERT forward).

erf uses Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, float32 rounding level) so the loop stays
vectorisable; libm's erf per element was the slowest step of a BERT forward.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def gelu_erf_into(x, out):  # pragma: no cover - compiled
    """out <- 0.5 x (1 + erf(x / sqrt 2)) for C-contiguous float32 arrays of the same size (viewed flat)."""
    src = x.reshape(-1)
    dst = out.reshape(-1)
    n = src.size
    chunk = 4096
    for c in prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = src[i]
            z = abs(v) * np.float32(0.7071067811865476)
            t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * z)
            poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
                np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
            erf_abs = np.float32(1.0) - poly * np.exp(-z * z)
            erf = erf_abs if v >= 0 else -erf_abs
            dst[i] = np.float32(0.5) * v * (np.float32(1.0) + erf)


@njit(parallel=True, cache=True, fastmath=False)
def layer_norm_rows(x, w, b, eps, out):  # pragma: no cover - compiled
    """out[r] = (x[r] - mean) / sqrt(var + eps) * w + b, mean and variance accumulated in float64."""
    n_rows, n = x.shape
    for r in prange(n_rows):
        s = 0.0
        for i in range(n):
            s += x[r, i]
        mu = s / n
        ss = 0.0
        for i in range(n):
            d = x[r, i] - mu
            ss += d * d
        inv = 1.0 / np.sqrt(ss / n + eps)
        for i in range(n):
            out[r, i] = np.float32((x[r, i] - mu) * inv) * w[i] + b[i]
