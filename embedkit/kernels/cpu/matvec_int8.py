"""Decode matvec with activations quantized to int8 blocks of 32 (like ggml's Q8_0 activations), for the
types whose block dot maps onto 32-lane integer multiply-adds (`int8dot`): Q8_0 and Q4_K.

x ~= xd[b] * xq[32 b : 32 b + 32] with xd[b] = max|x_block| / 127 (float32, more precise than ggml's
f16 scale); per element the activation error is at most xd[b] / 2, so a row's relative error is
about 1e-3 to 1e-2 of |y| on random data (tests bound it). Min terms use exact float sums of x.
Signature: `(w uint8 [n_rows, row_bytes], xq int8 [n], xd float32 [n // 32], xsum float32 [n // 32], y)`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import load_f16
from embedkit.kernels.cpu.int8dot import (
    dot4_q4_0,
    dot4_q4_1,
    dot4_q5_0,
    dot4_q5_1,
    dot4_q8_0,
    dot_row_q6_k,
    dot_u4s8,
)
from embedkit.kernels.cpu.matvec_kquants import _kquant_terms, kquant_scale_words
from embedkit.kernels.cpu.matvec_legacy import FAST, store4


@njit(cache=True)
def quantize_activations(x, xq, xd, xsum):
    """x float32 [n] -> xq int8 [n], xd (scales) and xsum (exact float sums) float32 [n // 32]."""
    for b in range(x.shape[0] // 32):
        amax = np.float32(0.0)
        s = np.float32(0.0)
        for i in range(32):
            v = x[32 * b + i]
            amax = max(amax, abs(v))
            s += v
        inv = np.float32(127.0) / amax if amax > np.float32(0.0) else np.float32(0.0)
        for i in range(32):
            xq[32 * b + i] = np.int8(np.rint(x[32 * b + i] * inv))
        xd[b] = amax / np.float32(127.0)
        xsum[b] = s


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q8_0_i8(w, xq, xd, xsum, y):
    """Q8_0 rows against int8 activations: y[r] = sum_b d_b * xd_b * (q . xq)_b (ggml_vec_dot_q8_0_q8_0)."""
    last = w.shape[0] - 1
    for g in prange((w.shape[0] + 3) // 4):
        r = 4 * g
        a0, a1, a2, a3 = dot4_q8_0(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_0_i8(w, xq, xd, xsum, y):
    """Q4_0 rows against int8 activations (ggml_vec_dot_q4_0_q8_0): q = nibble - 8."""
    last = w.shape[0] - 1
    for g in prange((w.shape[0] + 3) // 4):
        r = 4 * g
        a0, a1, a2, a3 = dot4_q4_0(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_1_i8(w, xq, xd, xsum, y):
    """Q4_1 rows against int8 activations (ggml_vec_dot_q4_1_q8_1): d_b xd_b (q . xq)_b + m_b xsum_b."""
    last = w.shape[0] - 1
    for g in prange((w.shape[0] + 3) // 4):
        r = 4 * g
        a0, a1, a2, a3 = dot4_q4_1(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_0_i8(w, xq, xd, xsum, y):
    """Q5_0 rows against int8 activations (ggml_vec_dot_q5_0_q8_0): q = (nibble | 5th bit << 4) - 16."""
    last = w.shape[0] - 1
    for g in prange((w.shape[0] + 3) // 4):
        r = 4 * g
        a0, a1, a2, a3 = dot4_q5_0(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_1_i8(w, xq, xd, xsum, y):
    """Q5_1 rows against int8 activations (ggml_vec_dot_q5_1_q8_1): d_b xd_b (q . xq)_b + m_b xsum_b."""
    last = w.shape[0] - 1
    for g in prange((w.shape[0] + 3) // 4):
        r = 4 * g
        a0, a1, a2, a3 = dot4_q5_1(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_k_i8(w, xq, xd, xsum, y):
    """Q4_K rows against int8 activations: integer nibble dots per 32-element sub-block, one row per step
    (rows side by side measured slower than reading the bytes in address order)."""
    nb = xd.shape[0] // 8
    for r in prange(w.shape[0]):
        w0 = w[r]
        a0 = np.float32(0.0)
        for b in range(nb):
            o = 144 * b
            s0a, s0b, s0c, s0d = kquant_scale_words(w0, o)
            d0 = load_f16(w0, o)
            m0 = load_f16(w0, o + 2)
            for j in range(4):
                qo = o + 16 + 32 * j
                xo = 256 * b + 64 * j
                sb = 8 * b + 2 * j
                l0 = xd[sb] * np.float32(dot_u4s8(w0, qo, 0, xq, xo))
                h0 = xd[sb + 1] * np.float32(dot_u4s8(w0, qo, 4, xq, xo + 32))
                a0 += _kquant_terms(s0a, s0b, s0c, s0d, d0, m0, j, l0, h0, xsum, sb)
        y[r] = a0


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q6_k_i8(w, xq, xd, xsum, y):
    """Q6_K rows against int8 activations (ggml_vec_dot_q6_K_q8_K), one row per step."""
    for r in prange(w.shape[0]):
        y[r] = dot_row_q6_k(w, r, xq, xd)
