"""GGUF rows -> float32 for every type of the `cpu.dequant` path: the row-parallel driver of `block_rows`,
compiled per type over that type's block decoder (`dequant_kernel(t)`; `kernels.cpu.dispatch` holds one per type).

A block decoder `block_<type>(row, o, dst, e)` writes the `block_size` values of the block at
`row[o:o + type_size]` to `dst[e:e + block_size]`. Each mirrors ggml's `dequantize_row_*` (ggml-quants.c) with
gguf-py's float32 rounding order (scale products first, no fused multiply-add), so results are bit-identical
to `gguf.quants.dequantize`. The kernel's signature is `(data uint8 [n_rows, row_bytes], out float32
[n_rows, n_cols])`; block bytes and elements come from the quant registry as compile-time constants and the
decoder is inlined, so each type's machine code is that of a loop written for it alone. Editing a decoder
recompiles its kernel (`block_rows` keys the cache on this module's source).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.block_rows import block_rows_kernel
from embedkit.kernels.cpu.halfbits import bits_to_f32, load_f16, load_u32
from embedkit.quant import QUANT_TYPES

# kvalues_iq4nl in ggml-common.h: the 16 non-linear levels of IQ4_NL / IQ4_XS.
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


# -- float types: one element a block --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def block_f32(row, o, dst, e):
    """F32: the little-endian float32 at row[o:o + 4]."""
    dst[e] = bits_to_f32(load_u32(row, o))


@njit(cache=True, inline="always")
def block_f16(row, o, dst, e):
    """F16: IEEE half to float32 (exact)."""
    dst[e] = load_f16(row, o)


@njit(cache=True, inline="always")
def block_bf16(row, o, dst, e):
    """BF16: the 16 bits become the high half of a float32 (exact)."""
    dst[e] = bits_to_f32((np.uint32(row[o]) << 16) | (np.uint32(row[o + 1]) << 24))


# -- 32-element blocks -----------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def block_q4_0(row, o, dst, e):
    """Q4_0: 18 bytes [d f16, 16 bytes of nibbles]; y = d * (q - 8)."""
    d = load_f16(row, o)
    for j in range(16):
        q = row[o + 2 + j]
        dst[e + j] = d * np.float32(np.int32(q & 0xF) - 8)
        dst[e + j + 16] = d * np.float32(np.int32(q >> 4) - 8)


@njit(cache=True, inline="always")
def block_q4_1(row, o, dst, e):
    """Q4_1: 20 bytes [d f16, m f16, 16 bytes of nibbles]; y = d * q + m."""
    d = load_f16(row, o)
    m = load_f16(row, o + 2)
    for j in range(16):
        q = row[o + 4 + j]
        dst[e + j] = d * np.float32(q & 0xF) + m
        dst[e + j + 16] = d * np.float32(q >> 4) + m


@njit(cache=True, inline="always")
def _five_bits(q, qh, j):
    """The two 5-bit values of byte j of a Q5 block: its nibbles, 5th bits j and j + 16 of qh."""
    lo = np.int32(q & 0xF) | (np.int32((qh >> j) & 1) << 4)
    hi = np.int32(q >> 4) | (np.int32((qh >> (j + 16)) & 1) << 4)
    return lo, hi


@njit(cache=True, inline="always")
def block_q5_0(row, o, dst, e):
    """Q5_0: 22 bytes [d f16, qh u32 (5th bits), 16 bytes of nibbles]; y = d * (q - 16)."""
    d = load_f16(row, o)
    qh = load_u32(row, o + 2)
    for j in range(16):
        lo, hi = _five_bits(row[o + 6 + j], qh, j)
        dst[e + j] = d * np.float32(lo - 16)
        dst[e + j + 16] = d * np.float32(hi - 16)


@njit(cache=True, inline="always")
def block_q5_1(row, o, dst, e):
    """Q5_1: 24 bytes [d f16, m f16, qh u32, 16 bytes of nibbles]; y = d * q + m."""
    d = load_f16(row, o)
    m = load_f16(row, o + 2)
    qh = load_u32(row, o + 4)
    for j in range(16):
        lo, hi = _five_bits(row[o + 8 + j], qh, j)
        dst[e + j] = d * np.float32(lo) + m
        dst[e + j + 16] = d * np.float32(hi) + m


@njit(cache=True, inline="always")
def block_q8_0(row, o, dst, e):
    """Q8_0: 34 bytes [d f16, 32 int8]; y = q * d."""
    d = load_f16(row, o)
    for j in range(32):
        dst[e + j] = np.float32(np.int8(row[o + 2 + j])) * d


@njit(cache=True, inline="always")
def _iq4_nibbles(row, qo, dl, dst, e):
    """The 32 values of 16 bytes of IQ4 nibbles at row[qo:qo + 16], low nibbles first: dl * IQ4NL_VALUES[q]."""
    for t in range(16):
        q = row[qo + t]
        dst[e + t] = dl * np.float32(IQ4NL_VALUES[q & 0xF])
        dst[e + t + 16] = dl * np.float32(IQ4NL_VALUES[q >> 4])


@njit(cache=True, inline="always")
def block_iq4_nl(row, o, dst, e):
    """IQ4_NL: 18 bytes [d f16, 16 bytes of nibbles indexing IQ4NL_VALUES]; y = d * value."""
    _iq4_nibbles(row, o + 2, load_f16(row, o), dst, e)


# -- 256-element super-blocks ------------------------------------------------------------------------------------


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


@njit(cache=True, inline="always")
def block_q2_k(row, o, dst, e):
    """Q2_K: 84 bytes [scales 16 (4-bit scale | 4-bit min), qs 64 (2-bit), d f16, dmin f16]."""
    d = load_f16(row, o + 80)
    dmin = load_f16(row, o + 82)
    for i in range(256):
        h = i >> 7
        s = (i >> 5) & 3
        sc = row[o + (i >> 4)]
        dl = d * np.float32(sc & 0xF)
        ml = dmin * np.float32(sc >> 4)
        q = (np.int32(row[o + 16 + 32 * h + (i & 31)]) >> (2 * s)) & 3
        dst[e + i] = dl * np.float32(q) - ml


@njit(cache=True, inline="always")
def block_q3_k(row, o, dst, e):
    """Q3_K: 110 bytes [hmask 32, qs 64 (low 2 bits), scales 12 (6-bit, packed), d f16]."""
    d = load_f16(row, o + 108)
    for k in range(16):
        if k < 8:
            lo = np.int32(row[o + 96 + k]) & 0xF
        else:
            lo = np.int32(row[o + 96 + k - 8]) >> 4
        hi = (np.int32(row[o + 104 + (k & 3)]) >> (2 * (k >> 2))) & 3
        dl = d * np.float32((lo | (hi << 4)) - 32)
        for t in range(16):
            i = 16 * k + t
            h = i >> 7
            s = (i >> 5) & 3
            l = i & 31
            ql = (np.int32(row[o + 32 + 32 * h + l]) >> (2 * s)) & 3
            hbit = (np.int32(row[o + l]) >> (i >> 5)) & 1
            q = ql - ((hbit ^ 1) << 2)
            dst[e + i] = dl * np.float32(q)


@njit(cache=True, inline="always")
def _block_q45_k(row, o, dst, e, qs, five):
    """Q4_K / Q5_K: d, dmin f16 at row[o:], 6-bit scales/mins at row[o + 4:], nibbles at row[qs:] and (Q5_K,
    `five`) 5th bits at row[o + 16:]; sub-block s: y = d * sc_s * q - dmin * m_s."""
    d = load_f16(row, o)
    dmin = load_f16(row, o + 2)
    for s in range(8):
        sc, mn = kquant_scale_min(row, o + 4, s)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(mn)
        qo = qs + 32 * (s >> 1)
        shift = 4 * (s & 1)
        for l in range(32):
            q = (np.int32(row[qo + l]) >> shift) & 0xF
            if five:
                q |= ((np.int32(row[o + 16 + l]) >> s) & 1) << 4
            dst[e + 32 * s + l] = dl * np.float32(q) - ml


@njit(cache=True, inline="always")
def block_q4_k(row, o, dst, e):
    """Q4_K: 144 bytes [d f16, dmin f16, scales 12 (6-bit scale/min x 8), qs 128 (nibbles)]."""
    _block_q45_k(row, o, dst, e, o + 16, False)


@njit(cache=True, inline="always")
def block_q5_k(row, o, dst, e):
    """Q5_K: 176 bytes [d f16, dmin f16, scales 12, qh 32 (5th bits), qs 128 (nibbles)]."""
    _block_q45_k(row, o, dst, e, o + 48, True)


@njit(cache=True, inline="always")
def block_q6_k(row, o, dst, e):
    """Q6_K: 210 bytes [ql 128 (low nibbles), qh 64 (high 2 bits), scales 16 int8, d f16]."""
    d = load_f16(row, o + 208)
    for h in range(2):
        for s in range(4):  # quarter s of half h: 32 elements, low nibbles of ql[64h + 32(s&1):] or high
            lo = o + 64 * h + 32 * (s & 1)
            lo_shift = 4 * (s >> 1)
            hi = o + 128 + 32 * h
            e0 = e + 128 * h + 32 * s
            for k in range(2):
                dl = d * np.float32(np.int8(row[o + 192 + 8 * h + 2 * s + k]))
                for t in range(16):
                    i = 16 * k + t
                    q_lo = (np.int32(row[lo + i]) >> lo_shift) & 0xF
                    q = q_lo | (((np.int32(row[hi + i]) >> (2 * s)) & 3) << 4)
                    dst[e0 + i] = dl * np.float32(q - 32)


@njit(cache=True, inline="always")
def block_iq4_xs(row, o, dst, e):
    """IQ4_XS: 136 bytes [d f16, scales_h u16, scales_l 4, qs 128 (nibbles into IQ4NL_VALUES)]."""
    d = load_f16(row, o)
    sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
    for ib in range(8):
        lo = (np.int32(row[o + 4 + (ib >> 1)]) >> (4 * (ib & 1))) & 0xF
        hi = (sh >> (2 * ib)) & 3
        dl = d * np.float32((lo | (hi << 4)) - 32)
        _iq4_nibbles(row, o + 8 + 16 * ib, dl, dst, e + 32 * ib)


# -- one kernel per type ----------------------------------------------------------------------------------------


@functools.cache
def dequant_kernel(t: GGMLType) -> Callable[[np.ndarray, np.ndarray], None]:
    """The parallel kernel `dequant_<type>(data, out)` of a registry type: rows of `data` (uint8 [n_rows,
    row_bytes]) decoded block by block with `block_<type>` into `out` (float32 [n_rows, n_cols])."""
    q = QUANT_TYPES[t]
    decoder = globals()[f"block_{q.kernel_suffix}"]
    return block_rows_kernel(f"dequant_{q.kernel_suffix}", decoder, q.type_size, q.block_size)
