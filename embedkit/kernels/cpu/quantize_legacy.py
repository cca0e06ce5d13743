"""Quantizers for the 32-element block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each mirrors ggml's `quantize_row_*_ref` (ggml-quants.c) with gguf-py's float32 arithmetic and
rounding (`np_roundf`, `trunc(x + 0.5)`), so the bytes are identical to `gguf.quants.quantize`.
Signature: `(x float32 [n_rows, n_cols], out uint8 [n_rows, row_bytes])`, parallel over rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import f32_to_f16


@njit(cache=True, inline="always")
def store_f16(buf, offset, value):
    """Write float32 `value` as a little-endian IEEE half at buf[offset:offset + 2]."""
    h = f32_to_f16(value)
    buf[offset] = np.uint8(h & 0xFF)
    buf[offset + 1] = np.uint8(h >> 8)


@njit(cache=True, inline="always")
def _inverse(d):
    if d == np.float32(0.0):
        return np.float32(0.0)
    return np.float32(1.0) / d


@njit(cache=True, inline="always")
def _signed_absmax(x, o):
    """The element of x[o:o+32] with the largest magnitude (first one on ties), sign kept."""
    amax = np.float32(0.0)
    vmax = np.float32(0.0)
    for j in range(32):
        v = x[o + j]
        if abs(v) > amax:
            amax = abs(v)
            vmax = v
    return vmax


@njit(cache=True, inline="always")
def _round_away(v):
    """Round half away from zero in float32 (gguf-py's np_roundf)."""
    a = abs(v)
    f = np.float32(math.floor(a))
    b = f + np.float32(math.floor(np.float32(2.0) * (a - f)))
    return -b if v < 0 else b


@njit(parallel=True, cache=True)
def quantize_q8_0(x, out):
    """Q8_0: d = max|x| / 127, q = round(x / d)."""
    nb = x.shape[1] // 32
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = 32 * b
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(src[o + j]))
            d = amax / np.float32(127.0)
            inv = _inverse(d)
            store_f16(dst, 34 * b, d)
            for j in range(32):
                q = np.int32(_round_away(src[o + j] * inv))
                dst[34 * b + 2 + j] = np.uint8(q & 0xFF)


@njit(parallel=True, cache=True)
def quantize_q4_0(x, out):
    """Q4_0: d = (signed absmax) / -8, q = min(15, trunc(x / d + 8.5))."""
    nb = x.shape[1] // 32
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = 32 * b
            d = _signed_absmax(src, o) / np.float32(-8.0)
            inv = _inverse(d)
            store_f16(dst, 18 * b, d)
            for j in range(16):
                q0 = min(15, np.int32(src[o + j] * inv + np.float32(8.5)))
                q1 = min(15, np.int32(src[o + j + 16] * inv + np.float32(8.5)))
                dst[18 * b + 2 + j] = np.uint8(q0 | (q1 << 4))


@njit(parallel=True, cache=True)
def quantize_q4_1(x, out):
    """Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d + 0.5))."""
    nb = x.shape[1] // 32
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = 32 * b
            vmin = src[o]
            vmax = src[o]
            for j in range(1, 32):
                vmin = min(vmin, src[o + j])
                vmax = max(vmax, src[o + j])
            d = (vmax - vmin) / np.float32(15.0)
            inv = _inverse(d)
            store_f16(dst, 20 * b, d)
            store_f16(dst, 20 * b + 2, vmin)
            for j in range(16):
                q0 = min(15, np.int32((src[o + j] - vmin) * inv + np.float32(0.5)))
                q1 = min(15, np.int32((src[o + j + 16] - vmin) * inv + np.float32(0.5)))
                dst[20 * b + 4 + j] = np.uint8(q0 | (q1 << 4))


@njit(parallel=True, cache=True)
def quantize_q5_0(x, out):
    """Q5_0: d = (signed absmax) / -16, q = min(31, trunc(x / d + 16.5)), 5th bits in qh."""
    nb = x.shape[1] // 32
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = 32 * b
            d = _signed_absmax(src, o) / np.float32(-16.0)
            inv = _inverse(d)
            store_f16(dst, 22 * b, d)
            qh = np.uint32(0)
            for j in range(16):
                q0 = min(31, np.int32(src[o + j] * inv + np.float32(16.5)))
                q1 = min(31, np.int32(src[o + j + 16] * inv + np.float32(16.5)))
                dst[22 * b + 6 + j] = np.uint8((q0 & 0xF) | ((q1 & 0xF) << 4))
                qh |= np.uint32(q0 >> 4) << j
                qh |= np.uint32(q1 >> 4) << (j + 16)
            for k in range(4):
                dst[22 * b + 2 + k] = np.uint8((qh >> (8 * k)) & 0xFF)


@njit(parallel=True, cache=True)
def quantize_q5_1(x, out):
    """Q5_1: d = (max - min) / 31, m = min, q = min(31, trunc((x - m) / d + 0.5)), 5th bits in qh."""
    nb = x.shape[1] // 32
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = 32 * b
            vmin = src[o]
            vmax = src[o]
            for j in range(1, 32):
                vmin = min(vmin, src[o + j])
                vmax = max(vmax, src[o + j])
            d = (vmax - vmin) / np.float32(31.0)
            inv = _inverse(d)
            store_f16(dst, 24 * b, d)
            store_f16(dst, 24 * b + 2, vmin)
            qh = np.uint32(0)
            for j in range(16):
                q0 = min(31, np.int32((src[o + j] - vmin) * inv + np.float32(0.5)))
                q1 = min(31, np.int32((src[o + j + 16] - vmin) * inv + np.float32(0.5)))
                dst[24 * b + 8 + j] = np.uint8((q0 & 0xF) | ((q1 & 0xF) << 4))
                qh |= np.uint32(q0 >> 4) << j
                qh |= np.uint32(q1 >> 4) << (j + 16)
            for k in range(4):
                dst[24 * b + 4 + k] = np.uint8((qh >> (8 * k)) & 0xFF)
