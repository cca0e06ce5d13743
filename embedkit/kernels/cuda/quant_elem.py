"""Element-wise dequantization of ggml rows on the GPU, one device function per layout.

Every function has the signature ``elem(a, b, c, row, i) -> float32``: element `i` of weight row `row`,
read from three views of the same upload: `a` uint8 [rows, row_bytes], `b` float16 [rows, row_bytes // 2]
and `c` float32 [rows, row_bytes // 4] (a (1, 1) dummy where the row is not a multiple of 4 bytes).
The "repacked" layouts (Q4_0R, Q8_0R) are the aligned structure-of-arrays copies made by
`quant_fast.repack`: `a` holds the quants, `b` the block scales.
They mirror the `dequantize_row_*` functions of ggml-quants.c. Slow-but-general: the fast decode
kernels for Q4_0 and Q8_0 live in `quant_fast.py`.
"""

from __future__ import annotations

import numpy as np
from numba import cuda


@cuda.jit(device=True, inline=True)
def elem_f32(a, b, c, row, i):
    return c[row, i]


@cuda.jit(device=True, inline=True)
def elem_f16(a, b, c, row, i):
    return np.float32(b[row, i])


@cuda.jit(device=True, inline=True)
def elem_q8_0(a, b, c, row, i):
    blk = i // 32
    d = np.float32(b[row, blk * 17])
    q = np.int32(a[row, blk * 34 + 2 + i % 32])
    if q >= 128:
        q -= 256
    return d * np.float32(q)


@cuda.jit(device=True, inline=True)
def elem_q4_0(a, b, c, row, i):
    blk = i // 32
    j = i % 32
    d = np.float32(b[row, blk * 9])
    q = np.int32(a[row, blk * 18 + 2 + j % 16])
    q = (q & 15) if j < 16 else (q >> 4)
    return d * np.float32(q - 8)


@cuda.jit(device=True, inline=True)
def elem_q4_1(a, b, c, row, i):
    blk = i // 32
    j = i % 32
    d = np.float32(b[row, blk * 10])
    m = np.float32(b[row, blk * 10 + 1])
    q = np.int32(a[row, blk * 20 + 4 + j % 16])
    q = (q & 15) if j < 16 else (q >> 4)
    return d * np.float32(q) + m


@cuda.jit(device=True, inline=True)
def _qh_bit(a, row, off, j):
    # bit j of the little-endian uint32 qh stored at byte offset `off`
    return (np.int32(a[row, off + j // 8]) >> (j % 8)) & 1


@cuda.jit(device=True, inline=True)
def elem_q5_0(a, b, c, row, i):
    blk = i // 32
    j = i % 32
    base = blk * 22
    d = np.float32(b[row, blk * 11])
    q = np.int32(a[row, base + 6 + j % 16])
    q = (q & 15) if j < 16 else (q >> 4)
    q |= _qh_bit(a, row, base + 2, j) << 4
    return d * np.float32(q - 16)


@cuda.jit(device=True, inline=True)
def elem_q5_1(a, b, c, row, i):
    blk = i // 32
    j = i % 32
    base = blk * 24
    d = np.float32(b[row, blk * 12])
    m = np.float32(b[row, blk * 12 + 1])
    q = np.int32(a[row, base + 8 + j % 16])
    q = (q & 15) if j < 16 else (q >> 4)
    q |= _qh_bit(a, row, base + 4, j) << 4
    return d * np.float32(q) + m


@cuda.jit(device=True, inline=True)
def q4_k_scale_min(a, row, s, sub):
    """(scale, min) of Q4_K sub-block `sub` (0-7) from the 12 packed 6-bit scale bytes at a[row, s:]."""
    if sub < 4:
        sc = np.int32(a[row, s + sub]) & 63
        mn = np.int32(a[row, s + sub + 4]) & 63
    else:
        sc = (np.int32(a[row, s + sub + 4]) & 0xF) | ((np.int32(a[row, s + sub - 4]) >> 6) << 4)
        mn = (np.int32(a[row, s + sub + 4]) >> 4) | ((np.int32(a[row, s + sub]) >> 6) << 4)
    return sc, mn


@cuda.jit(device=True, inline=True)
def elem_q4_k(a, b, c, row, i):
    blk = i // 256
    j = i % 256
    base = blk * 144
    d = np.float32(b[row, blk * 72])
    dmin = np.float32(b[row, blk * 72 + 1])
    # 8 sub-blocks of 32, two per 64-element chunk (low then high nibbles); scales[12] at byte 4
    sc, mn = q4_k_scale_min(a, row, base + 4, j // 32)
    chunk = j // 64
    q = np.int32(a[row, base + 16 + chunk * 32 + j % 32])
    q = (q & 15) if (j % 64) < 32 else (q >> 4)
    return d * np.float32(sc) * np.float32(q) - dmin * np.float32(mn)


@cuda.jit(device=True, inline=True)
def elem_q6_k(a, b, c, row, i):
    blk = i // 256
    j = i % 256
    base = blk * 210
    d = np.float32(b[row, blk * 105 + 104])  # d sits at byte 208 of the block
    half = j // 128
    l = j % 32
    quarter = (j % 128) // 32  # which of q1..q4
    ql = base + half * 64
    qh = base + 128 + half * 32
    if quarter == 0:
        q = (np.int32(a[row, ql + l]) & 0xF) | (((np.int32(a[row, qh + l]) >> 0) & 3) << 4)
    elif quarter == 1:
        q = (np.int32(a[row, ql + l + 32]) & 0xF) | (((np.int32(a[row, qh + l]) >> 2) & 3) << 4)
    elif quarter == 2:
        q = (np.int32(a[row, ql + l]) >> 4) | (((np.int32(a[row, qh + l]) >> 4) & 3) << 4)
    else:
        q = (np.int32(a[row, ql + l + 32]) >> 4) | (((np.int32(a[row, qh + l]) >> 6) & 3) << 4)
    sc = np.int32(a[row, base + 192 + half * 8 + l // 16 + 2 * quarter])
    if sc >= 128:
        sc -= 256
    return d * np.float32(sc) * np.float32(q - 32)


@cuda.jit(device=True, inline=True)
def elem_q4_0r(a, b, c, row, i):
    blk = i // 32
    j = i % 32
    q = np.int32(a[row, blk * 16 + j % 16])
    q = (q & 15) if j < 16 else (q >> 4)
    return np.float32(b[row, blk]) * np.float32(q - 8)


@cuda.jit(device=True, inline=True)
def elem_q8_0r(a, b, c, row, i):
    q = np.int32(a[row, i])
    if q >= 128:
        q -= 256
    return np.float32(b[row, i // 32]) * np.float32(q)


ELEMENT_FUNCTIONS = {
    "F32": elem_f32,
    "F16": elem_f16,
    "Q8_0": elem_q8_0,
    "Q4_0": elem_q4_0,
    "Q4_1": elem_q4_1,
    "Q5_0": elem_q5_0,
    "Q5_1": elem_q5_1,
    "Q4_K": elem_q4_k,
    "Q6_K": elem_q6_k,
    "Q4_0R": elem_q4_0r,
    "Q8_0R": elem_q8_0r,
}
