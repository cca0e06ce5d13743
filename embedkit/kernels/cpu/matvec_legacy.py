"""Fused decode matvec `y = W @ x` straight from quantized GGUF rows, for the 32-element block types
(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) and F16/BF16.

Float32 activations (no activation quantization, so float32-level accuracy). Work is parallel over
groups of 4 output rows (`prange`): the four weight streams are read together block by block and each
x element is loaded once for the four rows. Inner loops are written flat over the block's bytes, with
the rows side by side, so LLVM vectorises them (a helper function per block defeated the vectoriser);
nibbles are unpacked in 32-bit lanes (`bitfields`).
The last group clamps its row indices to the last row and stores only the rows that exist.
Offsets: sum(q - c) * x is computed as sum(q * x) - c * xsum[b], xsum[b] = sum of x's block b.

Signature: `(w uint8 [n_rows, row_bytes], x float32 [n_cols], xsum float32 [n_cols // 32], y float32 [n_rows])`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.bitfields import ubits2_f32, ubits_f32
from embedkit.kernels.cpu.dequant_legacy import IQ4NL_VALUES
from embedkit.kernels.cpu.halfbits import bits_to_f32, f16_to_f32, load_f16

FAST = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always")
def store4(y, r, a0, a1, a2, a3):
    """y[r:r+4] = a0..a3, skipping rows past the end (the clamped tail group)."""
    n = y.shape[0]
    y[r] = a0
    if r + 1 < n:
        y[r + 1] = a1
    if r + 2 < n:
        y[r + 2] = a2
    if r + 3 < n:
        y[r + 3] = a3


@njit(cache=True, inline="always")
def load_u32(row, o):
    return (
        np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8) | (np.uint32(row[o + 2]) << 16) | (np.uint32(row[o + 3]) << 24)
    )


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q8_0(w, x, xsum, y):
    """Q8_0 rows: y[r] = sum_b d_b * sum_i q_i x_i."""
    sw = w.view(np.int8)
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        q0, q1, q2, q3 = sw[r], sw[min(r + 1, last)], sw[min(r + 2, last)], sw[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 34 * b + 2
            xo = 32 * b
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(32):
                xv = x[xo + i]
                t0 += np.float32(q0[o + i]) * xv
                t1 += np.float32(q1[o + i]) * xv
                t2 += np.float32(q2[o + i]) * xv
                t3 += np.float32(q3[o + i]) * xv
            a0 += load_f16(w0, o - 2) * t0
            a1 += load_f16(w1, o - 2) * t1
            a2 += load_f16(w2, o - 2) * t2
            a3 += load_f16(w3, o - 2) * t3
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_0(w, x, xsum, y):
    """Q4_0 rows: y[r] = sum_b d_b * (sum_i q_i x_i - 8 xsum_b)."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 18 * b + 2
            xo = 32 * b
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(16):
                xl = x[xo + i]
                xh = x[xo + 16 + i]
                v0 = w0[o + i]
                v1 = w1[o + i]
                v2 = w2[o + i]
                v3 = w3[o + i]
                t0 += ubits_f32(v0, 0, 15) * xl + ubits_f32(v0, 4, 15) * xh
                t1 += ubits_f32(v1, 0, 15) * xl + ubits_f32(v1, 4, 15) * xh
                t2 += ubits_f32(v2, 0, 15) * xl + ubits_f32(v2, 4, 15) * xh
                t3 += ubits_f32(v3, 0, 15) * xl + ubits_f32(v3, 4, 15) * xh
            off = np.float32(8.0) * xsum[b]
            a0 += load_f16(w0, o - 2) * (t0 - off)
            a1 += load_f16(w1, o - 2) * (t1 - off)
            a2 += load_f16(w2, o - 2) * (t2 - off)
            a3 += load_f16(w3, o - 2) * (t3 - off)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_1(w, x, xsum, y):
    """Q4_1 rows: y[r] = sum_b d_b * sum_i q_i x_i + m_b xsum_b."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 20 * b + 4
            xo = 32 * b
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(16):
                xl = x[xo + i]
                xh = x[xo + 16 + i]
                v0 = w0[o + i]
                v1 = w1[o + i]
                v2 = w2[o + i]
                v3 = w3[o + i]
                t0 += ubits_f32(v0, 0, 15) * xl + ubits_f32(v0, 4, 15) * xh
                t1 += ubits_f32(v1, 0, 15) * xl + ubits_f32(v1, 4, 15) * xh
                t2 += ubits_f32(v2, 0, 15) * xl + ubits_f32(v2, 4, 15) * xh
                t3 += ubits_f32(v3, 0, 15) * xl + ubits_f32(v3, 4, 15) * xh
            s = xsum[b]
            a0 += load_f16(w0, o - 4) * t0 + load_f16(w0, o - 2) * s
            a1 += load_f16(w1, o - 4) * t1 + load_f16(w1, o - 2) * s
            a2 += load_f16(w2, o - 4) * t2 + load_f16(w2, o - 2) * s
            a3 += load_f16(w3, o - 4) * t3 + load_f16(w3, o - 2) * s
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_0(w, x, xsum, y):
    """Q5_0 rows: y[r] = sum_b d_b * (sum_i q_i x_i - 16 xsum_b), q = nibble | 5th bit << 4."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 22 * b + 6
            xo = 32 * b
            h0 = load_u32(w0, o - 4)
            h1 = load_u32(w1, o - 4)
            h2 = load_u32(w2, o - 4)
            h3 = load_u32(w3, o - 4)
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(16):
                xl = x[xo + i]
                xh = x[xo + 16 + i]
                v0 = w0[o + i]
                v1 = w1[o + i]
                v2 = w2[o + i]
                v3 = w3[o + i]
                t0 += ubits2_f32(v0, 0, 15, h0, i, 1, 4) * xl
                t0 += ubits2_f32(v0, 4, 15, h0, i + 16, 1, 4) * xh
                t1 += ubits2_f32(v1, 0, 15, h1, i, 1, 4) * xl
                t1 += ubits2_f32(v1, 4, 15, h1, i + 16, 1, 4) * xh
                t2 += ubits2_f32(v2, 0, 15, h2, i, 1, 4) * xl
                t2 += ubits2_f32(v2, 4, 15, h2, i + 16, 1, 4) * xh
                t3 += ubits2_f32(v3, 0, 15, h3, i, 1, 4) * xl
                t3 += ubits2_f32(v3, 4, 15, h3, i + 16, 1, 4) * xh
            off = np.float32(16.0) * xsum[b]
            a0 += load_f16(w0, o - 6) * (t0 - off)
            a1 += load_f16(w1, o - 6) * (t1 - off)
            a2 += load_f16(w2, o - 6) * (t2 - off)
            a3 += load_f16(w3, o - 6) * (t3 - off)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_1(w, x, xsum, y):
    """Q5_1 rows: y[r] = sum_b d_b * sum_i q_i x_i + m_b xsum_b, q = nibble | 5th bit << 4."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 24 * b + 8
            xo = 32 * b
            h0 = load_u32(w0, o - 4)
            h1 = load_u32(w1, o - 4)
            h2 = load_u32(w2, o - 4)
            h3 = load_u32(w3, o - 4)
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(16):
                xl = x[xo + i]
                xh = x[xo + 16 + i]
                v0 = w0[o + i]
                v1 = w1[o + i]
                v2 = w2[o + i]
                v3 = w3[o + i]
                t0 += ubits2_f32(v0, 0, 15, h0, i, 1, 4) * xl
                t0 += ubits2_f32(v0, 4, 15, h0, i + 16, 1, 4) * xh
                t1 += ubits2_f32(v1, 0, 15, h1, i, 1, 4) * xl
                t1 += ubits2_f32(v1, 4, 15, h1, i + 16, 1, 4) * xh
                t2 += ubits2_f32(v2, 0, 15, h2, i, 1, 4) * xl
                t2 += ubits2_f32(v2, 4, 15, h2, i + 16, 1, 4) * xh
                t3 += ubits2_f32(v3, 0, 15, h3, i, 1, 4) * xl
                t3 += ubits2_f32(v3, 4, 15, h3, i + 16, 1, 4) * xh
            s = xsum[b]
            a0 += load_f16(w0, o - 8) * t0 + load_f16(w0, o - 6) * s
            a1 += load_f16(w1, o - 8) * t1 + load_f16(w1, o - 6) * s
            a2 += load_f16(w2, o - 8) * t2 + load_f16(w2, o - 6) * s
            a3 += load_f16(w3, o - 8) * t3 + load_f16(w3, o - 6) * s
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_iq4_nl(w, x, xsum, y):
    """IQ4_NL rows: y[r] = sum_b d_b * sum_i IQ4NL_VALUES[q_i] x_i (a table lookup per element)."""
    n_rows = w.shape[0]
    nb = x.shape[0] // 32
    last = n_rows - 1
    values = IQ4NL_VALUES.astype(np.float32)
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = 18 * b + 2
            xo = 32 * b
            t0 = t1 = t2 = t3 = np.float32(0.0)
            for i in range(16):
                xl = x[xo + i]
                xh = x[xo + 16 + i]
                v0 = w0[o + i]
                v1 = w1[o + i]
                v2 = w2[o + i]
                v3 = w3[o + i]
                t0 += values[v0 & 0xF] * xl + values[v0 >> 4] * xh
                t1 += values[v1 & 0xF] * xl + values[v1 >> 4] * xh
                t2 += values[v2 & 0xF] * xl + values[v2 >> 4] * xh
                t3 += values[v3 & 0xF] * xl + values[v3 >> 4] * xh
            a0 += load_f16(w0, o - 2) * t0
            a1 += load_f16(w1, o - 2) * t1
            a2 += load_f16(w2, o - 2) * t2
            a3 += load_f16(w3, o - 2) * t3
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_f16(w, x, xsum, y):
    """F16 rows (vcvtph2ps with F16C)."""
    wu = w.view(np.uint16)
    n_rows = w.shape[0]
    n = x.shape[0]
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = wu[r], wu[min(r + 1, last)], wu[min(r + 2, last)], wu[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(n):
            xv = x[i]
            a0 += f16_to_f32(w0[i]) * xv
            a1 += f16_to_f32(w1[i]) * xv
            a2 += f16_to_f32(w2[i]) * xv
            a3 += f16_to_f32(w3[i]) * xv
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_bf16(w, x, xsum, y):
    """BF16 rows (each value is the high half of a float32)."""
    wu = w.view(np.uint16)
    n_rows = w.shape[0]
    n = x.shape[0]
    last = n_rows - 1
    for g in prange((n_rows + 3) // 4):
        r = 4 * g
        w0, w1, w2, w3 = wu[r], wu[min(r + 1, last)], wu[min(r + 2, last)], wu[min(r + 3, last)]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(n):
            xv = x[i]
            a0 += bits_to_f32(np.uint32(w0[i]) << 16) * xv
            a1 += bits_to_f32(np.uint32(w1[i]) << 16) * xv
            a2 += bits_to_f32(np.uint32(w2[i]) << 16) * xv
            a3 += bits_to_f32(np.uint32(w3[i]) << 16) * xv
        store4(y, r, a0, a1, a2, a3)
