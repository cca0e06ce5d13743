"""Q4_K x F32 matmul as llama.cpp's x86 AVX2 build computes it for weights repacked to block_q4_Kx8.

On AVX2, a Q4_K weight with a multiple of 8 output rows is interleaved at load time (8 rows per
`block_q4_Kx8`) and multiplied by `ggml_gemm_q4_K_8x8_q8_K` / `ggml_gemv_q4_K_8x8_q8_K`
(repack.cpp, arch/x86/repack.cpp). The activation rows are quantized to Q8_K: rows [0, n4) with
n4 = n_tok - n_tok % 4 four at a time (`ggml_quantize_mat_q8_K_4x8`) and multiplied by the gemm kernel,
the last n_tok % 4 rows one at a time (`quantize_row_q8_K`) and multiplied by the gemv kernel.

Per output (token t, weight row o) both kernels keep two float32 accumulators, fed by fused
multiply-adds of exact integer sums; they differ only in how often:

- gemm: once per pair of 32-element sub-blocks (4 times per 256-element super-block),
  acc = fma(float(sc[2p]*dot[2p] + sc[2p+1]*dot[2p+1]), d_w*d_x, acc) and
  acc_min = fma(float(mn[2p]*bsum[2p] + mn[2p+1]*bsum[2p+1]), dmin_w*d_x, acc_min);
- gemv: once per super-block, with the sums over all 8 sub-blocks;

and the result is acc - acc_min. (d_w*d_x is one float32 product; dot is the Q4 x Q8 integer dot
of a sub-block, bsum the sum of its Q8 codes.) The interleaved layout only decides which SIMD lane
holds which output, so the kernels here read the plain GGUF layout; `repack_q4_K_8x8` builds the
interleaved bytes for checks against ggml. `prepare_q4_K` folds each sub-block scale into the codes
(int16 sc*q): sc*dot is then one integer dot, which vectorizes far better than 32-element dots.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.ggml_exact.scalar import fma32
from embedkit.kernels.cpu.halfbits import load_f16

QK_K = 256
Q4_K_BLOCK_BYTES = 144
Q4_KX8_BLOCK_BYTES = 16 + 16 + 96 + 1024


class Q4KPrepared(NamedTuple):
    """A Q4_K weight decoded once for the matmul kernels (see `prepare_q4_K`)."""

    wq: np.ndarray  # int16 [n_out, k]: 6-bit sub-block scale * 4-bit code (0..945), element order
    mins: np.ndarray  # int32 [n_out, k // 32]: 6-bit sub-block mins
    d: np.ndarray  # float32 [n_out, k // 256]: super-block scale (from f16)
    dmin: np.ndarray  # float32 [n_out, k // 256]: super-block min scale (from f16)


@njit(cache=True, inline="always")
def _scale_min(row, o, j):
    """6-bit (scale, min) of sub-block j from the 12 packed bytes at row[o:o+12]."""
    if j < 4:
        sc = np.int32(row[o + j]) & 63
        mn = np.int32(row[o + j + 4]) & 63
    else:
        sc = (np.int32(row[o + j + 4]) & 0xF) | ((np.int32(row[o + j - 4]) >> 6) << 4)
        mn = (np.int32(row[o + j + 4]) >> 4) | ((np.int32(row[o + j]) >> 6) << 4)
    return sc, mn


@njit(parallel=True, cache=True, nogil=True)
def _decode_q4_K(w, wq, mins, d, dmin):
    nb = d.shape[1]
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(nb):
            o = Q4_K_BLOCK_BYTES * b
            d[r, b] = load_f16(row, o)
            dmin[r, b] = load_f16(row, o + 2)
            for s in range(8):
                sc, mn = _scale_min(row, o + 4, s)
                mins[r, 8 * b + s] = mn
                qo = o + 16 + 32 * (s >> 1)
                shift = 4 * (s & 1)
                for e in range(32):
                    wq[r, QK_K * b + 32 * s + e] = sc * ((np.int32(row[qo + e]) >> shift) & 0xF)


def prepare_q4_K(w: np.ndarray) -> Q4KPrepared:
    """Decode a Q4_K weight (uint8 [n_out, row_bytes], plain GGUF layout) for the exact matmuls."""
    w = np.ascontiguousarray(w, dtype=np.uint8)
    if w.ndim != 2 or w.shape[1] % Q4_K_BLOCK_BYTES:
        raise ValueError(f"Q4_K weight must be uint8 [n_out, n_blocks*{Q4_K_BLOCK_BYTES}], got {w.shape}")
    n_out, nb = w.shape[0], w.shape[1] // Q4_K_BLOCK_BYTES
    wq = np.empty((n_out, nb * QK_K), np.int16)
    mins = np.empty((n_out, nb * 8), np.int32)
    d = np.empty((n_out, nb), np.float32)
    dmin = np.empty((n_out, nb), np.float32)
    _decode_q4_K(w, wq, mins, d, dmin)
    return Q4KPrepared(wq, mins, d, dmin)


@njit(cache=True, nogil=True)
def _quantize_block_q8_K(x, off, grouped, xq, t):
    """Quantize x[off:off+256] into xq[t, off:off+256]; returns the block scale d.

    grouped=False is quantize_row_q8_K (scale from the first element of largest magnitude);
    grouped=True is ggml_quantize_mat_q8_K_4x8, which takes the positive sign on a +/- tie.
    Either way the codes only flip sign together with d, so the products do not change.
    """
    amax = np.float32(0.0)
    vmax = np.float32(0.0)
    for j in range(QK_K):
        v = x[off + j]
        a = abs(v)
        if a > amax:
            amax = a
            vmax = v
    if amax == np.float32(0.0):
        for j in range(QK_K):
            xq[t, off + j] = 0
        return np.float32(0.0)
    if grouped:
        vmax = -amax
        for j in range(QK_K):
            if x[off + j] == amax:
                vmax = amax
                break
    iscale = np.float32(-127.0) / vmax
    for j in range(QK_K):
        v = np.int32(np.rint(iscale * x[off + j]))
        xq[t, off + j] = min(v, 127)
    return np.float32(1.0) / iscale


@njit(parallel=True, cache=True, nogil=True)
def _quantize_q8_K(x, n_grouped, xq, xd, xsum):
    """Q8_K codes, scales and per-32 code sums of the rows of x (rows < n_grouped as the 4-row quantizer)."""
    n_tok, k = x.shape
    nb = k // QK_K
    for t in prange(n_tok):
        row = x[t]
        for b in range(nb):
            xd[t, b] = _quantize_block_q8_K(row, QK_K * b, t < n_grouped, xq, t)
            for s in range(8):
                acc = np.int32(0)
                for e in range(32):
                    acc += np.int32(xq[t, QK_K * b + 32 * s + e])
                xsum[t, 8 * b + s] = acc


# The dot loops index with unsigned integers: with signed ones Numba adds a negative-index wraparound
# select that keeps LLVM from vectorizing them (vpmaddwd), a 10x slowdown.
@njit(cache=True, inline="always")
def int_dot(wrow, xrow, base, n):
    """Integer dot of wrow[base:base+n] and xrow[base:base+n] (int32, exact)."""
    b = np.uint64(base)
    dot = np.int32(0)
    for e in range(n):
        i = b + np.uint64(e)
        dot = np.int32(dot + np.int32(wrow[i]) * np.int32(xrow[i]))
    return dot


@njit(cache=True, inline="always")
def int_dot_x4(wrow, x0, x1, x2, x3, base, n):
    """`int_dot` of wrow with four activation rows at once (one pass over the weight)."""
    b = np.uint64(base)
    d0 = np.int32(0)
    d1 = np.int32(0)
    d2 = np.int32(0)
    d3 = np.int32(0)
    for e in range(n):
        i = b + np.uint64(e)
        w = np.int32(wrow[i])
        d0 = np.int32(d0 + w * np.int32(x0[i]))
        d1 = np.int32(d1 + w * np.int32(x1[i]))
        d2 = np.int32(d2 + w * np.int32(x2[i]))
        d3 = np.int32(d3 + w * np.int32(x3[i]))
    return d0, d1, d2, d3


@njit(parallel=True, cache=True, nogil=True)
def _mm_repack(wq, mins, d, dmin, xq, xd, xsum, n_grouped, out):
    n_out = wq.shape[0]
    nb = d.shape[1]
    n_tok = xq.shape[0]
    for o in prange(n_out):
        wrow = wq[o]
        isum = np.empty(4, np.int32)
        acc = np.empty(4, np.float32)
        acc_min = np.empty(4, np.float32)
        # gemm rows, four at a time: one fma per pair of sub-blocks (64 elements)
        for t0 in range(0, n_grouped, 4):
            x0, x1, x2, x3 = xq[t0], xq[t0 + 1], xq[t0 + 2], xq[t0 + 3]
            acc[:] = 0
            acc_min[:] = 0
            for b in range(nb):
                for p in range(4):
                    s0 = 8 * b + 2 * p
                    isum[0], isum[1], isum[2], isum[3] = int_dot_x4(wrow, x0, x1, x2, x3, 32 * s0, 64)
                    for j in range(4):
                        t = t0 + j
                        imin = mins[o, s0] * xsum[t, s0] + mins[o, s0 + 1] * xsum[t, s0 + 1]
                        acc[j] = fma32(np.float32(isum[j]), d[o, b] * xd[t, b], acc[j])
                        acc_min[j] = fma32(np.float32(imin), dmin[o, b] * xd[t, b], acc_min[j])
            for j in range(4):
                out[t0 + j, o] = acc[j] - acc_min[j]
        # gemv rows: one fma per super-block
        for t in range(n_grouped, n_tok):
            xrow = xq[t]
            a = np.float32(0.0)
            a_min = np.float32(0.0)
            for b in range(nb):
                imin = np.int32(0)
                for s in range(8 * b, 8 * b + 8):
                    imin = np.int32(imin + mins[o, s] * xsum[t, s])
                a = fma32(np.float32(int_dot(wrow, xrow, QK_K * b, QK_K)), d[o, b] * xd[t, b], a)
                a_min = fma32(np.float32(imin), dmin[o, b] * xd[t, b], a_min)
            out[t, o] = a - a_min


def mul_mat_q4_K_repack(w: np.ndarray | None, x: np.ndarray, prepared: Q4KPrepared | None = None) -> np.ndarray:
    """y = x @ W.T for a Q4_K weight as llama.cpp's AVX2 repacked path (q4_K_8x8_q8_K) computes it, bit for bit.

    w: uint8 [n_out, row_bytes] in plain GGUF Q4_K layout (n_out % 8 == 0, as ggml requires to repack;
    may be None when `prepared` is given). x: float32 [n_tok, k]. prepared: `prepare_q4_K(w)`, to decode
    the weight once. Returns float32 [n_tok, n_out].
    """
    if prepared is None:
        if w is None:
            raise ValueError("give w or prepared")
        prepared = prepare_q4_K(w)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_out, k = prepared.wq.shape
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x must be float32 [n_tok, {k}], got {x.shape}")
    n_tok = x.shape[0]
    n_grouped = n_tok - n_tok % 4
    xq, xd, xsum = _quantize_q8_K_rows(x, n_grouped)
    out = np.empty((n_tok, n_out), np.float32)
    _mm_repack(prepared.wq, prepared.mins, prepared.d, prepared.dmin, xq, xd, xsum, n_grouped, out)
    return out


def _quantize_q8_K_rows(x: np.ndarray, n_grouped: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q8_K-quantize the rows of x (float32 [n_tok, k]) as ggml does before a K-quant matmul.

    Rows below n_grouped follow ggml_quantize_mat_q8_K_4x8, the rest quantize_row_q8_K.
    Returns (codes int8 [n_tok, k], d float32 [n_tok, k // 256], code sums int32 [n_tok, k // 32]).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, k = x.shape
    if k % QK_K:
        raise ValueError(f"k = {k} is not a multiple of {QK_K}")
    xq = np.empty((n_tok, k), np.int8)
    xd = np.empty((n_tok, k // QK_K), np.float32)
    xsum = np.empty((n_tok, k // 32), np.int32)
    _quantize_q8_K(x, n_grouped, xq, xd, xsum)
    return xq, xd, xsum


def repack_q4_K_8x8(w: np.ndarray) -> np.ndarray:
    """ggml's block_q4_Kx8 bytes (interleave 8) of a Q4_K weight: uint8 [n_out // 8, n_blocks * 1152].

    Group g holds rows 8g..8g+7; per super-block: the 8 d and 8 dmin halves, 96 bytes of scales and mins
    re-packed so that each 12 bytes hold one sub-block of all 8 rows, then the quants in 8-byte chunks
    taken from the rows in turn.
    """
    w = np.ascontiguousarray(w, dtype=np.uint8)
    n_out, row_bytes = w.shape
    if n_out % 8 or row_bytes % Q4_K_BLOCK_BYTES:
        raise ValueError(f"need n_out % 8 == 0 and whole Q4_K blocks, got {w.shape}")
    nb = row_bytes // Q4_K_BLOCK_BYTES
    blocks = w.reshape(n_out // 8, 8, nb, Q4_K_BLOCK_BYTES).transpose(0, 2, 1, 3)  # [g, b, row, 144]
    out = np.empty((n_out // 8, nb, Q4_KX8_BLOCK_BYTES), np.uint8)
    out[:, :, 0:16] = blocks[..., 0:2].reshape(n_out // 8, nb, 16)
    out[:, :, 16:32] = blocks[..., 2:4].reshape(n_out // 8, nb, 16)
    sc = blocks[..., 4:16].astype(np.int32)
    # 6-bit scale/min of sub-block j for each row: [g, b, row, j]
    scale = np.empty(sc.shape[:3] + (8,), np.int32)
    mn = np.empty_like(scale)
    for j in range(8):
        if j < 4:
            scale[..., j] = sc[..., j] & 63
            mn[..., j] = sc[..., j + 4] & 63
        else:
            scale[..., j] = (sc[..., j + 4] & 0xF) | ((sc[..., j - 4] >> 6) << 4)
            mn[..., j] = (sc[..., j + 4] >> 4) | ((sc[..., j] >> 6) << 4)
    packed = np.empty(sc.shape[:2] + (96,), np.int32)
    for j in range(8):
        s, m = scale[..., j], mn[..., j]  # [g, b, row]
        o = 12 * j
        packed[..., o:o + 4] = (s[..., 0:4] & 63) | ((s[..., 4:8] & 48) << 2)
        packed[..., o + 4:o + 8] = (m[..., 0:4] & 63) | ((m[..., 4:8] & 48) << 2)
        packed[..., o + 8:o + 12] = (s[..., 4:8] & 15) | ((m[..., 4:8] & 15) << 4)
    out[:, :, 32:128] = packed.astype(np.uint8)
    qs = blocks[..., 16:144].reshape(n_out // 8, nb, 8, 16, 8)  # [g, b, row, chunk, 8]
    out[:, :, 128:] = qs.transpose(0, 1, 3, 2, 4).reshape(n_out // 8, nb, 1024)
    return out.reshape(n_out // 8, nb * Q4_KX8_BLOCK_BYTES)
