"""Fused decode matvec `y = W @ x` straight from K-quant rows with float32 activations (registry path
`cpu.matvec`): Q5_K and IQ4_XS (Q4_K and Q6_K decode with int16 activations, `matvec_int8`).

Same scheme as `matvec_legacy`: float32 activations, `prange` over groups of output rows read side by
side, flat inner loops over each sub-block's bytes so LLVM vectorises them; integer sub-block scales
are applied once per sub-block. The min terms of Q5_K use xsum (sums of x per 32 elements).
Signature: `(w uint8 [n_rows, row_bytes], x float32 [n_cols], xsum float32 [n_cols // 32], y float32 [n_rows])`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.bitfields import ubits2_f32
from embedkit.kernels.cpu.dequant import IQ4NL_VALUES
from embedkit.kernels.cpu.halfbits import load_f16
from embedkit.kernels.cpu.matvec_legacy import FAST, iq4_dots4, store4


@njit(cache=True, inline="always")
def _u32(row, o):
    return np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16) | (np.int64(row[o + 3]) << 24)


@njit(cache=True, inline="always")
def kquant_scale_words(row, o):
    """The 8 six-bit scales and 8 mins of a Q4_K/Q5_K super-block as four words of 4 bytes each:
    (scales 0-3, scales 4-7, mins 0-3, mins 4-7), from the 12 packed bytes at row[o + 4:]
    (the word trick of ggml's vec_dot_q4_K: a few masks instead of one get_scale_min_k4 per sub-block)."""
    w0 = _u32(row, o + 4)
    w1 = _u32(row, o + 8)
    w2 = _u32(row, o + 12)
    sc_lo = w0 & 0x3F3F3F3F
    sc_hi = (w2 & 0x0F0F0F0F) | (((w0 >> 6) & 0x03030303) << 4)
    m_lo = w1 & 0x3F3F3F3F
    m_hi = ((w2 >> 4) & 0x0F0F0F0F) | (((w1 >> 6) & 0x03030303) << 4)
    return sc_lo, sc_hi, m_lo, m_hi


@njit(cache=True, inline="always")
def _kquant_terms(sc_lo, sc_hi, m_lo, m_hi, d, dmin, j, lo, hi, xsum, sb):
    """d * (sc_2j * lo + sc_2j+1 * hi) - dmin * (m_2j * xsum[sb] + m_2j+1 * xsum[sb + 1])."""
    sc_word = sc_lo if j < 2 else sc_hi
    m_word = m_lo if j < 2 else m_hi
    shift = 16 * (j & 1)
    sc0 = np.float32((sc_word >> shift) & 0xFF)
    sc1 = np.float32((sc_word >> (shift + 8)) & 0xFF)
    m0 = np.float32((m_word >> shift) & 0xFF)
    m1 = np.float32((m_word >> (shift + 8)) & 0xFF)
    return d * (sc0 * lo + sc1 * hi) - dmin * (m0 * xsum[sb] + m1 * xsum[sb + 1])


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_k(w, x, xsum, y):
    """Q5_K rows: Q4_K's layout plus a 5th bit per element from qh (bit 2j / 2j+1 of qh[i])."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 256
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 176 * b
            s0a, s0b, s0c, s0d = kquant_scale_words(w0, o)
            s1a, s1b, s1c, s1d = kquant_scale_words(w1, o)
            s2a, s2b, s2c, s2d = kquant_scale_words(w2, o)
            s3a, s3b, s3c, s3d = kquant_scale_words(w3, o)
            d0, d1, d2, d3 = load_f16(w0, o), load_f16(w1, o), load_f16(w2, o), load_f16(w3, o)
            m0, m1, m2, m3 = load_f16(w0, o + 2), load_f16(w1, o + 2), load_f16(w2, o + 2), load_f16(w3, o + 2)
            for j in range(4):
                qo = o + 48 + 32 * j
                xo = 256 * b + 64 * j
                sh = 2 * j
                l0 = l1 = l2 = l3 = np.float32(0.0)
                h0 = h1 = h2 = h3 = np.float32(0.0)
                for i in range(32):
                    xl = x[xo + i]
                    xh = x[xo + 32 + i]
                    v0 = w0[qo + i]
                    v1 = w1[qo + i]
                    v2 = w2[qo + i]
                    v3 = w3[qo + i]
                    e0 = w0[o + 16 + i]
                    e1 = w1[o + 16 + i]
                    e2 = w2[o + 16 + i]
                    e3 = w3[o + 16 + i]
                    l0 += ubits2_f32(v0, 0, 15, e0, sh, 1, 4) * xl
                    h0 += ubits2_f32(v0, 4, 15, e0, sh + 1, 1, 4) * xh
                    l1 += ubits2_f32(v1, 0, 15, e1, sh, 1, 4) * xl
                    h1 += ubits2_f32(v1, 4, 15, e1, sh + 1, 1, 4) * xh
                    l2 += ubits2_f32(v2, 0, 15, e2, sh, 1, 4) * xl
                    h2 += ubits2_f32(v2, 4, 15, e2, sh + 1, 1, 4) * xh
                    l3 += ubits2_f32(v3, 0, 15, e3, sh, 1, 4) * xl
                    h3 += ubits2_f32(v3, 4, 15, e3, sh + 1, 1, 4) * xh
                sb = 8 * b + 2 * j
                a0 += _kquant_terms(s0a, s0b, s0c, s0d, d0, m0, j, l0, h0, xsum, sb)
                a1 += _kquant_terms(s1a, s1b, s1c, s1d, d1, m1, j, l1, h1, xsum, sb)
                a2 += _kquant_terms(s2a, s2b, s2c, s2d, d2, m2, j, l2, h2, xsum, sb)
                a3 += _kquant_terms(s3a, s3b, s3c, s3d, d3, m3, j, l3, h3, xsum, sb)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_iq4_xs(w, x, xsum, y):
    """IQ4_XS rows: 8 sub-blocks of 32 with 6-bit scales, values from IQ4NL_VALUES (a lookup per element)."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 256
    last = n_rows - 1
    values = IQ4NL_VALUES.astype(np.float32)
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 136 * b
            for ib in range(8):
                qo = o + 8 + 16 * ib
                xo = 256 * b + 32 * ib
                t0, t1, t2, t3 = iq4_dots4(w0, w1, w2, w3, qo, x, xo, values)
                a0 += _iq4_xs_scale(w0, o, ib) * t0
                a1 += _iq4_xs_scale(w1, o, ib) * t1
                a2 += _iq4_xs_scale(w2, o, ib) * t2
                a3 += _iq4_xs_scale(w3, o, ib) * t3
        store4(y, r, a0, a1, a2, a3)


@njit(cache=True, inline="always")
def _iq4_xs_scale(row, o, ib):
    """d * (6-bit scale of sub-block ib - 32)."""
    lo = (np.int32(row[o + 4 + (ib >> 1)]) >> (4 * (ib & 1))) & 0xF
    hi = ((np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)) >> (2 * ib)) & 3
    return load_f16(row, o) * np.float32((lo | (hi << 4)) - 32)
