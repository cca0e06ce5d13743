"""Dequantizers for the 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL.

Each mirrors ggml's `dequantize_row_*` (ggml-quants.c) and rounds exactly like gguf-py's
`quants.py` (float32 products, no fused multiply-add), so results are bit-identical.
Signature: `(data uint8 [n_rows, row_bytes], out float32 [n_rows, n_cols])`, parallel over rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import load_f16

# kvalues_iq4nl in ggml-common.h: the 16 non-linear levels of IQ4_NL / IQ4_XS.
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


@njit(parallel=True, cache=True)
def dequant_q4_0(data, out):
    """Q4_0: 18-byte blocks [d f16, 16 bytes of nibbles]; y = d * (q - 8)."""
    nb = out.shape[1] // 32
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 18 * b
            d = load_f16(row, o)
            for j in range(16):
                q = row[o + 2 + j]
                dst[32 * b + j] = d * np.float32(np.int32(q & 0xF) - 8)
                dst[32 * b + j + 16] = d * np.float32(np.int32(q >> 4) - 8)


@njit(parallel=True, cache=True)
def dequant_q4_1(data, out):
    """Q4_1: 20-byte blocks [d f16, m f16, 16 bytes of nibbles]; y = d * q + m."""
    nb = out.shape[1] // 32
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 20 * b
            d = load_f16(row, o)
            m = load_f16(row, o + 2)
            for j in range(16):
                q = row[o + 4 + j]
                dst[32 * b + j] = d * np.float32(q & 0xF) + m
                dst[32 * b + j + 16] = d * np.float32(q >> 4) + m


@njit(parallel=True, cache=True)
def dequant_q5_0(data, out):
    """Q5_0: 22-byte blocks [d f16, qh u32 (5th bits), 16 bytes of nibbles]; y = d * (q - 16)."""
    nb = out.shape[1] // 32
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 22 * b
            d = load_f16(row, o)
            qh = (
                np.uint32(row[o + 2])
                | (np.uint32(row[o + 3]) << 8)
                | (np.uint32(row[o + 4]) << 16)
                | (np.uint32(row[o + 5]) << 24)
            )
            for j in range(16):
                q = row[o + 6 + j]
                h0 = np.int32((qh >> j) & 1) << 4
                h1 = np.int32((qh >> (j + 16)) & 1) << 4
                dst[32 * b + j] = d * np.float32((np.int32(q & 0xF) | h0) - 16)
                dst[32 * b + j + 16] = d * np.float32((np.int32(q >> 4) | h1) - 16)


@njit(parallel=True, cache=True)
def dequant_q5_1(data, out):
    """Q5_1: 24-byte blocks [d f16, m f16, qh u32, 16 bytes of nibbles]; y = d * q + m."""
    nb = out.shape[1] // 32
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 24 * b
            d = load_f16(row, o)
            m = load_f16(row, o + 2)
            qh = (
                np.uint32(row[o + 4])
                | (np.uint32(row[o + 5]) << 8)
                | (np.uint32(row[o + 6]) << 16)
                | (np.uint32(row[o + 7]) << 24)
            )
            for j in range(16):
                q = row[o + 8 + j]
                h0 = np.int32((qh >> j) & 1) << 4
                h1 = np.int32((qh >> (j + 16)) & 1) << 4
                dst[32 * b + j] = d * np.float32(np.int32(q & 0xF) | h0) + m
                dst[32 * b + j + 16] = d * np.float32(np.int32(q >> 4) | h1) + m


@njit(parallel=True, cache=True)
def dequant_q8_0(data, out):
    """Q8_0: 34-byte blocks [d f16, 32 int8]; y = q * d."""
    nb = out.shape[1] // 32
    qs = data.view(np.int8)
    for r in prange(data.shape[0]):
        row = data[r]
        qrow = qs[r]
        dst = out[r]
        for b in range(nb):
            o = 34 * b
            d = load_f16(row, o)
            for j in range(32):
                dst[32 * b + j] = np.float32(qrow[o + 2 + j]) * d


@njit(parallel=True, cache=True)
def dequant_iq4_nl(data, out):
    """IQ4_NL: 18-byte blocks [d f16, 16 bytes of nibbles indexing IQ4NL_VALUES]; y = d * value."""
    nb = out.shape[1] // 32
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 18 * b
            d = load_f16(row, o)
            for j in range(16):
                q = row[o + 2 + j]
                dst[32 * b + j] = d * np.float32(IQ4NL_VALUES[q & 0xF])
                dst[32 * b + j + 16] = d * np.float32(IQ4NL_VALUES[q >> 4])
