"""Fused decode matvec `y = W @ x` straight from GGUF rows with float32 activations (registry path
`cpu.matvec`), for the 32-element block types without integer decode kernels (IQ4_NL) and F16/BF16; Q8_0,
Q4_0, Q4_1, Q5_0 and Q5_1 decode with int16 activations (`matvec_int8`).

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

from embedkit.kernels.cpu.dequant import IQ4NL_VALUES
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
def iq4_dots4(w0, w1, w2, w3, qo, x, xo, values):
    """Four rows' sums of values[q] * x over 32 elements of IQ4 nibbles (16 bytes at w*[qo:], low nibbles with
    x[xo:xo + 16], high with x[xo + 16:xo + 32]); `values`: IQ4NL_VALUES as float32."""
    t0 = t1 = t2 = t3 = np.float32(0.0)
    for i in range(16):
        xl = x[xo + i]
        xh = x[xo + 16 + i]
        v0 = w0[qo + i]
        v1 = w1[qo + i]
        v2 = w2[qo + i]
        v3 = w3[qo + i]
        t0 += values[v0 & 0xF] * xl + values[v0 >> 4] * xh
        t1 += values[v1 & 0xF] * xl + values[v1 >> 4] * xh
        t2 += values[v2 & 0xF] * xl + values[v2 >> 4] * xh
        t3 += values[v3 & 0xF] * xl + values[v3 >> 4] * xh
    return t0, t1, t2, t3


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
            t0, t1, t2, t3 = iq4_dots4(w0, w1, w2, w3, o, x, xo, values)
            a0 += load_f16(w0, o - 2) * t0
            a1 += load_f16(w1, o - 2) * t1
            a2 += load_f16(w2, o - 2) * t2
            a3 += load_f16(w3, o - 2) * t3
        store4(y, r, a0, a1, a2, a3)


@njit(cache=True, inline="always")
def _half_to_f32(h, bf16):
    """float32 of a 16-bit float: IEEE half (vcvtph2ps with F16C) or, with `bf16`, bfloat16 (the high half of a
    float32)."""
    if bf16:
        return bits_to_f32(np.uint32(h) << 16)
    return f16_to_f32(h)


@njit(cache=True, inline="always")
def _matvec_halves(w, x, y, bf16):
    """y = W @ x for rows of 16-bit floats (`_half_to_f32`), four rows at a time."""
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
            a0 += _half_to_f32(w0[i], bf16) * xv
            a1 += _half_to_f32(w1[i], bf16) * xv
            a2 += _half_to_f32(w2[i], bf16) * xv
            a3 += _half_to_f32(w3[i], bf16) * xv
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_f16(w, x, xsum, y):
    """F16 rows."""
    _matvec_halves(w, x, y, False)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_bf16(w, x, xsum, y):
    """BF16 rows."""
    _matvec_halves(w, x, y, True)
