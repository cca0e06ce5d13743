"""Exact (erf) GELU and LayerNorm on float32 rows (the elementwise steps of a BERT forward).

erf is `fast_f32.erf_f32` (rational approximation, |error| ~4e-7, vectorised); the `*_block` kernels are
serial and release the GIL, for `row_blocks.run_blocks` (the CPU backend runs them over row blocks).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.kernels.cpu.fast_f32 import erf_f32

# Reassociation lets LLVM vectorise the LayerNorm sums; inf/nan semantics stay.
_REASSOC = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _gelu_erf(v):  # pragma: no cover - compiled
    """0.5 v (1 + erf(v / sqrt 2)) of one float32."""
    return np.float32(0.5) * v * (np.float32(1.0) + erf_f32(v * np.float32(0.7071067811865476)))


@njit(cache=True, fastmath=True, error_model="numpy", nogil=True)
def gelu_erf_block(x, out):  # pragma: no cover - compiled
    """out <- 0.5 x (1 + erf(x / sqrt 2)) for C-contiguous float32 arrays of the same size (viewed flat)."""
    src = x.reshape(-1)
    dst = out.reshape(-1)
    for i in range(src.size):
        dst[i] = _gelu_erf(src[i])


@njit(cache=True, fastmath=_REASSOC, nogil=True)
def layer_norm_block(x, w, b, eps, out):  # pragma: no cover - compiled
    """out[r] = (x[r] - mean) / sqrt(var + eps) * w + b for x, out [rows, n]; sums in float64."""
    n_rows, n = x.shape
    for r in range(n_rows):
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



@njit(cache=True, fastmath=True, error_model="numpy", nogil=True)
def bias_gelu_erf_rows(y, bias):  # pragma: no cover - compiled
    """y[r] <- gelu_erf(y[r] + bias) in place, y [rows, n] (rows may be strided: a block of a product's columns)."""
    n_rows, n = y.shape
    for r in range(n_rows):
        for i in range(n):
            y[r, i] = _gelu_erf(y[r, i] + bias[i])


@njit(cache=True, fastmath=_REASSOC, nogil=True)
def bias_residual_layer_norm_block(y, bias, res, w, b, eps):  # pragma: no cover - compiled
    """y[r] <- layer_norm((y[r] + bias) + res[r]) * w + b in place, y, res [rows, n] float32: the product's bias, a
    post-LayerNorm block's residual and its LayerNorm in one pass over the rows (as `layer_norm_block`)."""
    n_rows, n = y.shape
    for r in range(n_rows):
        s = 0.0
        for i in range(n):
            t = (y[r, i] + bias[i]) + res[r, i]
            y[r, i] = t
            s += t
        mu = s / n
        ss = 0.0
        for i in range(n):
            d = y[r, i] - mu
            ss += d * d
        inv = 1.0 / np.sqrt(ss / n + eps)
        for i in range(n):
            y[r, i] = np.float32((y[r, i] - mu) * inv) * w[i] + b[i]
