"""K-quant x F32 matmul as llama.cpp's x86 AVX2 'tiled' path computes it (ggml-cpu/tiled/), bit for bit.

ggml_compute_forward_mul_mat hands a MUL_MAT to the tiled code (on by default, GGML_CPU_TILED_MM) when the
weight is Q6_K, Q5_K, Q4_K, Q3_K, Q2_K or an IQ type, is not held in a repacked buffer (on AVX2 that
leaves Q4_K only when its row count is not a multiple of 8), and the activation has >= 8 rows. All
activation rows are quantized with quantize_row_q8_K. For each output the tiled kernel walks K in
256-element super-blocks, in order, whatever the tiling or thread count:

    s1  = sum over sub-blocks of scale * (integer dot of weight codes and Q8 codes)   (exact int32)
    res = d_w * float(s1)                                                             (one rounding)
    Q4_K also subtracts its mins: res = fma(-dmin_w, float(sum of min * Q8 code sum), res)
    acc = fma(res, d_x, acc)                                                          (acc starts at 0)

(The AVX2 kernel biases the Q8 codes by +128 and the Q6_K codes by -32 and corrects exactly in integers;
the result is the plain signed dot.) The prepared weights hold scale * code as int16, so s1 is a single
256-element integer dot here. Weights in the repack buffer (Q4_K with n_out % 8 == 0 on AVX2) go through
q4k_repack instead; fewer than 8 activation rows through the plain vec_dot kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.ggml_exact.q4k_repack import (
    Q4KPrepared,
    _quantize_q8_K_rows,
    int_dot,
    int_dot_x4,
    prepare_q4_K,
)
from embedkit.kernels.cpu.ggml_exact.scalar import fma32
from embedkit.kernels.cpu.halfbits import load_f16

QK_K = 256
Q6_K_BLOCK_BYTES = 210
MIN_TILED_ROWS = 8  # ggml_tiled_min_batch: fewer activation rows take the plain vec_dot path


class Q6KPrepared(NamedTuple):
    """A Q6_K weight decoded once for `mul_mat_q6_K_tiled` (see `prepare_q6_K`)."""

    wq: np.ndarray  # int16 [n_out, k]: int8 sub-block scale * (6-bit code - 32), element order
    d: np.ndarray  # float32 [n_out, k // 256]: super-block scale (from f16)


@njit(parallel=True, cache=True, nogil=True)
def _decode_q6_K(w, wq, d):
    nb = d.shape[1]
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(nb):
            o = Q6_K_BLOCK_BYTES * b
            d[r, b] = load_f16(row, o + 208)
            # element 128h + 32j + lane: low 4 bits from ql[64h + 32(j & 1) + lane] (high nibble when j >= 2),
            # high 2 bits from qh[32h + lane] at bit 2j; scale: int8 scales[(element % 256) // 16]
            for h in range(2):
                for j in range(4):
                    lo = o + 64 * h + 32 * (j & 1)
                    lo_shift = 4 * (j >> 1)
                    hi = o + 128 + 32 * h
                    for lane in range(32):
                        e = 128 * h + 32 * j + lane
                        sc = np.int32(np.int8(row[o + 192 + e // 16]))
                        v = ((np.int32(row[lo + lane]) >> lo_shift) & 0xF) | (
                            ((np.int32(row[hi + lane]) >> (2 * j)) & 3) << 4)
                        wq[r, QK_K * b + e] = sc * (v - 32)


def prepare_q6_K(w: np.ndarray) -> Q6KPrepared:
    """Decode a Q6_K weight (uint8 [n_out, row_bytes], plain GGUF layout) for `mul_mat_q6_K_tiled`."""
    w = np.ascontiguousarray(w, dtype=np.uint8)
    if w.ndim != 2 or w.shape[1] % Q6_K_BLOCK_BYTES:
        raise ValueError(f"Q6_K weight must be uint8 [n_out, n_blocks*{Q6_K_BLOCK_BYTES}], got {w.shape}")
    n_out, nb = w.shape[0], w.shape[1] // Q6_K_BLOCK_BYTES
    wq = np.empty((n_out, nb * QK_K), np.int16)
    d = np.empty((n_out, nb), np.float32)
    _decode_q6_K(w, wq, d)
    return Q6KPrepared(wq, d)


@njit(parallel=True, cache=True, nogil=True)
def _mm_q6_K(wq, d, xq, xd, out):
    n_out = wq.shape[0]
    nb = d.shape[1]
    n_tok = xq.shape[0]
    n4 = n_tok - n_tok % 4
    for o in prange(n_out):
        wrow = wq[o]
        s1 = np.empty(4, np.int32)
        acc = np.empty(4, np.float32)
        for t0 in range(0, n4, 4):
            x0, x1, x2, x3 = xq[t0], xq[t0 + 1], xq[t0 + 2], xq[t0 + 3]
            acc[:] = 0
            for b in range(nb):
                s1[0], s1[1], s1[2], s1[3] = int_dot_x4(wrow, x0, x1, x2, x3, QK_K * b, QK_K)
                for j in range(4):
                    acc[j] = fma32(d[o, b] * np.float32(s1[j]), xd[t0 + j, b], acc[j])
            for j in range(4):
                out[t0 + j, o] = acc[j]
        for t in range(n4, n_tok):
            xrow = xq[t]
            a = np.float32(0.0)
            for b in range(nb):
                a = fma32(d[o, b] * np.float32(int_dot(wrow, xrow, QK_K * b, QK_K)), xd[t, b], a)
            out[t, o] = a


@njit(cache=True, inline="always")
def _q4_K_block_result(d, dmin, s1, s2):
    """The tiled kernel's per-super-block value: d * float(s1), then minus dmin * float(s2) in one fma."""
    return fma32(-dmin, np.float32(s2), d * np.float32(s1))


@njit(parallel=True, cache=True, nogil=True)
def _mm_q4_K(wq, mins, d, dmin, xq, xd, xsum, out):
    n_out = wq.shape[0]
    nb = d.shape[1]
    n_tok = xq.shape[0]
    n4 = n_tok - n_tok % 4
    for o in prange(n_out):
        wrow = wq[o]
        s1 = np.empty(4, np.int32)
        acc = np.empty(4, np.float32)
        for t0 in range(0, n4, 4):
            x0, x1, x2, x3 = xq[t0], xq[t0 + 1], xq[t0 + 2], xq[t0 + 3]
            acc[:] = 0
            for b in range(nb):
                s1[0], s1[1], s1[2], s1[3] = int_dot_x4(wrow, x0, x1, x2, x3, QK_K * b, QK_K)
                for j in range(4):
                    t = t0 + j
                    s2 = np.int32(0)
                    for s in range(8 * b, 8 * b + 8):
                        s2 = np.int32(s2 + mins[o, s] * xsum[t, s])
                    acc[j] = fma32(_q4_K_block_result(d[o, b], dmin[o, b], s1[j], s2), xd[t, b], acc[j])
            for j in range(4):
                out[t0 + j, o] = acc[j]
        for t in range(n4, n_tok):
            xrow = xq[t]
            a = np.float32(0.0)
            for b in range(nb):
                s2 = np.int32(0)
                for s in range(8 * b, 8 * b + 8):
                    s2 = np.int32(s2 + mins[o, s] * xsum[t, s])
                s1_b = int_dot(wrow, xrow, QK_K * b, QK_K)
                a = fma32(_q4_K_block_result(d[o, b], dmin[o, b], s1_b, s2), xd[t, b], a)
            out[t, o] = a


def _check_x(x: np.ndarray, k: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x must be float32 [n_tok, {k}], got {x.shape}")
    return x


def mul_mat_q6_K_tiled(w: np.ndarray | None, x: np.ndarray, prepared: Q6KPrepared | None = None) -> np.ndarray:
    """y = x @ W.T for a Q6_K weight as llama.cpp's AVX2 tiled matmul computes it, bit for bit.

    ggml takes this path for >= 8 activation rows (MIN_TILED_ROWS); the arithmetic does not depend on the
    row count, so fewer rows are computed the same way here. w: uint8 [n_out, row_bytes] in GGUF Q6_K layout
    (may be None when `prepared` is given); x: float32 [n_tok, k]; prepared: `prepare_q6_K(w)`.
    Returns float32 [n_tok, n_out].
    """
    if prepared is None:
        if w is None:
            raise ValueError("give w or prepared")
        prepared = prepare_q6_K(w)
    n_out, k = prepared.wq.shape
    x = _check_x(x, k)
    xq, xd, _ = _quantize_q8_K_rows(x)
    out = np.empty((x.shape[0], n_out), np.float32)
    _mm_q6_K(prepared.wq, prepared.d, xq, xd, out)
    return out


def mul_mat_q4_K_tiled(w: np.ndarray | None, x: np.ndarray, prepared: Q4KPrepared | None = None) -> np.ndarray:
    """y = x @ W.T for a Q4_K weight that ggml does not repack (n_out % 8 != 0 on AVX2), via the tiled matmul.

    Bit for bit as llama.cpp's AVX2 tiled path for >= 8 activation rows. w: uint8 [n_out, row_bytes] in
    GGUF Q4_K layout (may be None when `prepared` is given); x: float32 [n_tok, k];
    prepared: `prepare_q4_K(w)` from q4k_repack. Returns float32 [n_tok, n_out].
    """
    if prepared is None:
        if w is None:
            raise ValueError("give w or prepared")
        prepared = prepare_q4_K(w)
    n_out, k = prepared.wq.shape
    x = _check_x(x, k)
    xq, xd, xsum = _quantize_q8_K_rows(x)
    out = np.empty((x.shape[0], n_out), np.float32)
    _mm_q4_K(prepared.wq, prepared.mins, prepared.d, prepared.dmin, xq, xd, xsum, out)
    return out
