"""ggml's CPU get_rows, scale, add, mul and rms_norm (+ the weight multiply), bit for bit.

- add / mul (binary-ops.cpp) and scale with zero bias (ggml_vec_scale_f32) are one IEEE float32 operation
  per element, whatever the SIMD width, so plain float32 numpy is exact.
- get_rows of a quantized matrix is ggml's dequantize_row_* (ggml-quants.c); for Q8_0 and Q5_0 (the token
  embeddings of Gemma 3 / SmolLM2 and Qwen2) that is one float32 product q*d per element, which
  embedkit's dequantizers compute identically (checked against the library).
- rms_norm (ops.cpp, ggml_compute_forward_rms_norm_f32) sums the float32 squares x*x into a double in
  element order, rounds sum/n to float, and scales by 1.0f/sqrtf(mean + eps). The CPU backend fuses
  rms_norm with the following mul (ggml_cpu_try_fuse_ops, unless GGML_CPU_DISABLE_FUSION=1) into
  y = x*scale*w; unfused it stores x*scale and then multiplies by w: the same two roundings, so both
  variants give the same bits (checked against the library in both modes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit import kernels


def get_rows(raw: np.ndarray, ggml_type: int, ids: np.ndarray, n_cols: int) -> np.ndarray:
    """Rows `ids` of a quantized matrix (raw bytes uint8 [n_rows, row_bytes]) as float32 [len(ids), n_cols]:
    embedkit's dequantizers, as `CPUBackend.get_rows` runs them (this is the function the goldens check)."""
    rows = raw[np.asarray(ids, dtype=np.int64)]
    return kernels.dequantize(rows, ggml_type, (len(rows), n_cols))


def scale(x: np.ndarray, s: float) -> np.ndarray:
    """ggml_scale(x, s) (bias 0): x * float32(s)."""
    return np.multiply(x, np.float32(s), dtype=np.float32)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_add(a, b) in float32; b broadcasts over a's rows (residual adds, Qwen2's Q/K/V bias)."""
    return np.add(a, b, dtype=np.float32)


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_mul(a, b) in float32; b broadcasts over a's rows."""
    return np.multiply(a, b, dtype=np.float32)


@njit(cache=True, nogil=True, inline="always")
def _inv_rms(x, eps):
    acc = 0.0
    for i in range(x.shape[0]):
        acc += np.float64(x[i] * x[i])
    mean = np.float32(acc / x.shape[0])
    return np.float32(1.0) / np.sqrt(mean + eps)


@njit(cache=True, nogil=True)
def _rms_norm_rows(x, eps, out):
    for r in range(x.shape[0]):
        s = _inv_rms(x[r], eps)
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] * s


@njit(cache=True, nogil=True)
def _rms_norm_mul_rows(x, w, eps, out):
    for r in range(x.shape[0]):
        s = _inv_rms(x[r], eps)
        for i in range(x.shape[1]):
            out[r, i] = (x[r, i] * s) * w[i]


def _rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """ggml_rms_norm over the last axis of float32 x (any leading shape)."""
    xr = _rows(x)
    out = np.empty_like(xr)
    _rms_norm_rows(xr, np.float32(eps), out)
    return out.reshape(x.shape)


def rms_norm_mul(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """llama.cpp's build_norm(LLM_NORM_RMS) with a weight: ggml_mul(ggml_rms_norm(x, eps), w), w of length
    x.shape[-1] (n_embd for attn/ffn/output norms, head_dim for Gemma's per-head Q/K norms)."""
    xr = _rows(x)
    wv = np.ascontiguousarray(w, dtype=np.float32)
    if wv.shape != (xr.shape[1],):
        raise ValueError(f"weight shape {w.shape} does not match rows of {xr.shape[1]}")
    out = np.empty_like(xr)
    _rms_norm_mul_rows(xr, wv, np.float32(eps), out)
    return out.reshape(x.shape)
