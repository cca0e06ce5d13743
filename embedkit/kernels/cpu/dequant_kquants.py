"""Dequantizers for the 256-element super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS.

Each mirrors ggml's `dequantize_row_*` (ggml-quants.c) with gguf-py's float32 rounding order
(scale products first, no fused multiply-add), so results are bit-identical to `gguf.quants`.
Signature: `(data uint8 [n_rows, row_bytes], out float32 [n_rows, n_cols])`, parallel over rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.dequant_legacy import IQ4NL_VALUES
from embedkit.kernels.cpu.halfbits import load_f16


@njit(cache=True, inline="always")
def kquant_scale_min(row, o, j):
    """6-bit (scale, min) of sub-block j from the 12 packed bytes at row[o:o+12] (get_scale_min_k4)."""
    if j < 4:
        sc = np.int32(row[o + j]) & 63
        mn = np.int32(row[o + j + 4]) & 63
    else:
        sc = (np.int32(row[o + j + 4]) & 0xF) | ((np.int32(row[o + j - 4]) >> 6) << 4)
        mn = (np.int32(row[o + j + 4]) >> 4) | ((np.int32(row[o + j]) >> 6) << 4)
    return sc, mn


@njit(parallel=True, cache=True)
def dequant_q2_k(data, out):
    """Q2_K: 84 bytes [scales 16 (4-bit scale | 4-bit min), qs 64 (2-bit), d f16, dmin f16]."""
    nb = out.shape[1] // 256
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 84 * b
            d = load_f16(row, o + 80)
            dmin = load_f16(row, o + 82)
            for e in range(256):
                h = e >> 7
                s = (e >> 5) & 3
                sc = row[o + (e >> 4)]
                dl = d * np.float32(sc & 0xF)
                ml = dmin * np.float32(sc >> 4)
                q = (np.int32(row[o + 16 + 32 * h + (e & 31)]) >> (2 * s)) & 3
                dst[256 * b + e] = dl * np.float32(q) - ml


@njit(parallel=True, cache=True)
def dequant_q3_k(data, out):
    """Q3_K: 110 bytes [hmask 32, qs 64 (low 2 bits), scales 12 (6-bit, packed), d f16]."""
    nb = out.shape[1] // 256
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 110 * b
            d = load_f16(row, o + 108)
            for k in range(16):
                if k < 8:
                    lo = np.int32(row[o + 96 + k]) & 0xF
                else:
                    lo = np.int32(row[o + 96 + k - 8]) >> 4
                hi = (np.int32(row[o + 104 + (k & 3)]) >> (2 * (k >> 2))) & 3
                dl = d * np.float32((lo | (hi << 4)) - 32)
                for t in range(16):
                    e = 16 * k + t
                    h = e >> 7
                    s = (e >> 5) & 3
                    l = e & 31
                    ql = (np.int32(row[o + 32 + 32 * h + l]) >> (2 * s)) & 3
                    hbit = (np.int32(row[o + l]) >> (e >> 5)) & 1
                    q = ql - ((hbit ^ 1) << 2)
                    dst[256 * b + e] = dl * np.float32(q)


@njit(parallel=True, cache=True)
def dequant_q4_k(data, out):
    """Q4_K: 144 bytes [d f16, dmin f16, scales 12 (6-bit scale/min x 8), qs 128 (nibbles)]."""
    nb = out.shape[1] // 256
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 144 * b
            d = load_f16(row, o)
            dmin = load_f16(row, o + 2)
            for s in range(8):
                sc, mn = kquant_scale_min(row, o + 4, s)
                dl = d * np.float32(sc)
                ml = dmin * np.float32(mn)
                qo = o + 16 + 32 * (s >> 1)
                shift = 4 * (s & 1)
                for l in range(32):
                    q = (np.int32(row[qo + l]) >> shift) & 0xF
                    dst[256 * b + 32 * s + l] = dl * np.float32(q) - ml


@njit(parallel=True, cache=True)
def dequant_q5_k(data, out):
    """Q5_K: 176 bytes [d f16, dmin f16, scales 12, qh 32 (5th bits), qs 128 (nibbles)]."""
    nb = out.shape[1] // 256
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 176 * b
            d = load_f16(row, o)
            dmin = load_f16(row, o + 2)
            for s in range(8):
                sc, mn = kquant_scale_min(row, o + 4, s)
                dl = d * np.float32(sc)
                ml = dmin * np.float32(mn)
                qo = o + 48 + 32 * (s >> 1)
                shift = 4 * (s & 1)
                for l in range(32):
                    q = ((np.int32(row[qo + l]) >> shift) & 0xF) | (((np.int32(row[o + 16 + l]) >> s) & 1) << 4)
                    dst[256 * b + 32 * s + l] = dl * np.float32(q) - ml


@njit(parallel=True, cache=True)
def dequant_q6_k(data, out):
    """Q6_K: 210 bytes [ql 128 (low nibbles), qh 64 (high 2 bits), scales 16 int8, d f16]."""
    nb = out.shape[1] // 256
    sdata = data.view(np.int8)
    for r in prange(data.shape[0]):
        row = data[r]
        srow = sdata[r]
        dst = out[r]
        for b in range(nb):
            o = 210 * b
            d = load_f16(row, o + 208)
            for h in range(2):
                for s in range(4):  # quarter s of half h: 32 elements, low nibbles of ql[64h + 32(s&1):] or high
                    lo = o + 64 * h + 32 * (s & 1)
                    lo_shift = 4 * (s >> 1)
                    hi = o + 128 + 32 * h
                    e0 = 256 * b + 128 * h + 32 * s
                    for k in range(2):
                        dl = d * np.float32(srow[o + 192 + 8 * h + 2 * s + k])
                        for t in range(16):
                            i = 16 * k + t
                            q_lo = (np.int32(row[lo + i]) >> lo_shift) & 0xF
                            q = q_lo | (((np.int32(row[hi + i]) >> (2 * s)) & 3) << 4)
                            dst[e0 + i] = dl * np.float32(q - 32)


@njit(parallel=True, cache=True)
def dequant_iq4_xs(data, out):
    """IQ4_XS: 136 bytes [d f16, scales_h u16, scales_l 4, qs 128 (nibbles into IQ4NL_VALUES)]."""
    nb = out.shape[1] // 256
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for b in range(nb):
            o = 136 * b
            d = load_f16(row, o)
            sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
            for ib in range(8):
                lo = (np.int32(row[o + 4 + (ib >> 1)]) >> (4 * (ib & 1))) & 0xF
                hi = (sh >> (2 * ib)) & 3
                dl = d * np.float32((lo | (hi << 4)) - 32)
                for t in range(16):
                    q = row[o + 8 + 16 * ib + t]
                    dst[256 * b + 32 * ib + t] = dl * np.float32(IQ4NL_VALUES[q & 0xF])
                    dst[256 * b + 32 * ib + t + 16] = dl * np.float32(IQ4NL_VALUES[q >> 4])
