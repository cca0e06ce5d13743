"""Fast decode kernels for Q4_0 and Q8_0: aligned repacking, int8 activations, dp4a matvec.

At upload a ggml Q4_0/Q8_0 tensor is split into an aligned quant array (16 or 32 bytes per block,
read as uint64 words) and a float16 scale array (the "R" layouts). The activation row is quantized
to int8 blocks of 32 with one float32 scale each (like ggml's Q8_1, without the sum), so the inner
loop is integer dot products (dp4a) on 8-byte words, coalesced across the warp: lane l reads word
l, l+32, ... of the row.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import dot8, q8_lane, warp_sum
from embedkit.kernels.cuda.launch import fast

WARP = 32
ROWS_PER_BLOCK = 4  # one warp per output row, 4 warps per block

_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BIAS_78 = np.uint64(0x7878787878787878)
_SIGN_80 = np.uint64(0x8080808080808080)
_FOUR = np.uint64(4)


@cuda.jit
def repack_q4_0(raw, raw16, qs, d):
    """raw uint8 [rows, nb*18] -> qs uint8 [rows, nb*16], d float16 [rows, nb] (thread per block)."""
    r = cuda.blockIdx.x
    blk = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if blk >= d.shape[1]:
        return
    d[r, blk] = raw16[r, blk * 9]
    for j in range(16):
        qs[r, blk * 16 + j] = raw[r, blk * 18 + 2 + j]


@cuda.jit
def repack_q8_0(raw, raw16, qs, d):
    """raw uint8 [rows, nb*34] -> qs uint8 [rows, nb*32], d float16 [rows, nb] (thread per block)."""
    r = cuda.blockIdx.x
    blk = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if blk >= d.shape[1]:
        return
    d[r, blk] = raw16[r, blk * 17]
    for j in range(32):
        qs[r, blk * 32 + j] = raw[r, blk * 34 + 2 + j]


@cuda.jit
def quantize_rows_q8(x, xq, xd):
    """x float32 [n, k] -> xq int8 [n, k], xd float32 [n, k/32]: symmetric int8 per block of 32.

    One warp per block of 32 values (lane j holds value j), so the max is a warp reduction."""
    t = cuda.blockIdx.y
    lane = cuda.threadIdx.x % WARP
    blk = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
    valid = blk < xd.shape[1]
    v = x[t, blk * 32 + lane] if valid else np.float32(0.0)
    q, dd = q8_lane(v)
    if valid:
        xq[t, blk * 32 + lane] = q
        if lane == 0:
            xd[t, blk] = dd


@cuda.jit(device=True, inline=True)
def _q4_nib(wv):
    """(low, high) nibbles of a Q4_0R word as q - 8 in signed bytes, without carries between bytes."""
    lo = ((wv & _LOW_NIBBLES) + _BIAS_78) ^ _SIGN_80
    hi = (((wv >> _FOUR) & _LOW_NIBBLES) + _BIAS_78) ^ _SIGN_80
    return lo, hi


@cuda.jit(device=True, inline=True)
def _q4_dot(lo, hi, xlo, xhi):
    return dot8(hi, xhi, dot8(lo, xlo, 0))


@cuda.jit(device=True, inline=True)
def _q8_word(wv, xq64, xd, d, t, r, w):
    """Word w (8 int8 quants) of a Q8_0R row times the matching activation word, scaled."""
    blk = w >> 2
    return np.float32(dot8(wv, xq64[t, w], 0)) * (np.float32(d[r, blk]) * xd[t, blk])


@cuda.jit(device=True, inline=True)
def _q4_word(wv, xq64, xd, d, t, r, w):
    """Word w (16 nibbles) of a Q4_0R row: low nibbles are elements 8k..8k+7 of block w//2
    (k = w % 2), high nibbles 16+8k.."""
    blk = w >> 1
    k = w & 1
    lo, hi = _q4_nib(wv)
    s = _q4_dot(lo, hi, xq64[t, blk * 4 + k], xq64[t, blk * 4 + 2 + k])
    return np.float32(s) * (np.float32(d[r, blk]) * xd[t, blk])


def repack(raw, ggml_name: str, n_rows: int, n_cols: int, stream=0):
    """Split a device uint8 [n_rows, row_bytes] Q4_0/Q8_0 upload into (qs uint8, d float16) arrays."""
    nb = n_cols // 32
    bytes_per_block = 16 if ggml_name == "Q4_0" else 32
    qs = cuda.device_array((n_rows, nb * bytes_per_block), dtype=np.uint8, stream=stream)
    d = cuda.device_array((n_rows, nb), dtype=np.float16, stream=stream)
    raw16 = raw.view(np.float16)
    kernel = repack_q4_0 if ggml_name == "Q4_0" else repack_q8_0
    threads = 128
    kernel[(n_rows, math.ceil(nb / threads)), threads, stream](raw, raw16, qs, d)
    return qs, d


def activation_buffers(n: int, k: int, stream=0):
    """Device (xq64 uint64 [n, k/8], xd float32 [n, k/32]) for `quantize_activations`."""
    return (
        cuda.device_array((n, k // 8), dtype=np.uint64, stream=stream),
        cuda.device_array((n, k // 32), dtype=np.float32, stream=stream),
    )


def quantize_activations(x, xq64, xd, stream=0) -> None:
    """x float32 [n, k] device -> xq64 (int8 blocks as uint64 words), xd (block scales)."""
    n, k = x.shape
    warps = 4
    fast(quantize_rows_q8)[(math.ceil(k // 32 / warps), n), warps * WARP, stream](x, xq64.view(np.int8), xd)


# -- decode matvec over several matrices ----------------------------------------------------------
# One warp per output row, four 8-byte words per lane in flight, for up to three matrices that share the
# input in one launch (Q/K/V, gate/up) and an optional fused residual (y2 = y + res, the `x + W @ h` of a
# transformer block). The first-generation kernels (one matrix a launch) live in
# benchmarks/kernels/cuda_matvec_v1.py. An eight-word,
# index-clamped variant measured slower on the H100 (Q8_0 55% against 76% of the copy bandwidth).

MV_WARPS = ROWS_PER_BLOCK  # warps (rows) per block


def _make_mv(word):
    @cuda.jit
    def mv(xq64, xd, qa, da, ya, ba, na, qb, db, yb, bb, nb_, qc, dc, yc, bc, nc, has_bias, res, y2, has_res):
        lane = cuda.threadIdx.x % WARP
        g = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
        t = cuda.blockIdx.y
        if g < na:
            qs, d, y, b, r, valid = qa, da, ya, ba, g, True
        elif g < na + nb_:
            qs, d, y, b, r, valid = qb, db, yb, bb, g - na, True
        else:
            qs, d, y, b, r = qc, dc, yc, bc, g - na - nb_
            valid = r < nc
        n_words = qs.shape[1] if valid else 0
        acc = np.float32(0.0)
        w = lane
        while w + 3 * WARP < n_words:
            w0 = qs[r, w]
            w1 = qs[r, w + WARP]
            w2 = qs[r, w + 2 * WARP]
            w3 = qs[r, w + 3 * WARP]
            acc += word(w0, xq64, xd, d, t, r, w)
            acc += word(w1, xq64, xd, d, t, r, w + WARP)
            acc += word(w2, xq64, xd, d, t, r, w + 2 * WARP)
            acc += word(w3, xq64, xd, d, t, r, w + 3 * WARP)
            w += 4 * WARP
        while w < n_words:
            acc += word(qs[r, w], xq64, xd, d, t, r, w)
            w += WARP
        acc = warp_sum(acc)
        if lane == 0 and valid:
            if has_bias:
                acc += b[r]
            y[t, r] = acc
            if has_res:
                y2[t, r] = acc + res[t, r]

    return mv


mv_q8_0r = _make_mv(_q8_word)
mv_q4_0r = _make_mv(_q4_word)


@cuda.jit(device=True, inline=True)
def _q8_dot(wv, xv):
    return dot8(wv, xv, 0)


MV_MAX_WARPS = 32  # warps per block the split-K partial sums have room for


def _make_mv_rows(q4: bool, rows_per_warp: int, words: int, split: int = 1):
    """Multi-matrix dp4a matvec with `rows_per_warp` rows per warp (sharing the activation loads)
    and `words` words per lane per trip: rows_per_warp * words weight loads in flight.

    With `split` > 1, that many consecutive warps of a block share a group of rows, warp k taking
    words k*32 + lane, (k + split)*32 + lane, ...; their partial sums meet in shared memory. A
    matrix with few rows (Mistral's 4096-row down projection: 1024 groups of four rows) then still
    puts enough warps on every SM to keep the loads in flight."""
    R = rows_per_warp
    U = words
    S = split
    STEP = S * WARP

    @cuda.jit
    def mv(xq64, xd, qa, da, ya, ba, na, qb, db, yb, bb, nb_, qc, dc, yc, bc, nc, has_bias, res, y2, has_res):
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        g = cuda.blockIdx.x * (cuda.blockDim.x // WARP // S) + warp // S
        part = warp % S
        t = cuda.blockIdx.y
        wa = (na + R - 1) // R
        wb = (nb_ + R - 1) // R
        if g < wa:
            qs, d, y, b, r0, rows = qa, da, ya, ba, R * g, na
        elif g < wa + wb:
            qs, d, y, b, r0, rows = qb, db, yb, bb, R * (g - wa), nb_
        else:
            qs, d, y, b, r0, rows = qc, dc, yc, bc, R * (g - wa - wb), nc
        rr = cuda.local.array(R, dtype=np.int64)
        acc = cuda.local.array(R, dtype=np.float32)
        wv = cuda.local.array((U, R), dtype=np.uint64)
        for i in range(R):
            rr[i] = min(r0 + i, rows - 1)  # rows past the end repeat the last one (not written)
            acc[i] = np.float32(0.0)
        n_words = qs.shape[1] if r0 < rows else 0
        w = lane + part * WARP
        while w + (U - 1) * STEP < n_words:
            for u in range(U):
                for i in range(R):
                    wv[u, i] = qs[rr[i], w + u * STEP]
            for u in range(U):
                ww = w + u * STEP
                if q4:
                    blk = ww >> 1
                    k = ww & 1
                    xlo = xq64[t, blk * 4 + k]
                    xhi = xq64[t, blk * 4 + 2 + k]
                    x = xd[t, blk]
                    for i in range(R):
                        lo, hi = _q4_nib(wv[u, i])
                        acc[i] += np.float32(_q4_dot(lo, hi, xlo, xhi)) * (np.float32(d[rr[i], blk]) * x)
                else:
                    blk = ww >> 2
                    xv = xq64[t, ww]
                    x = xd[t, blk]
                    for i in range(R):
                        acc[i] += np.float32(_q8_dot(wv[u, i], xv)) * (np.float32(d[rr[i], blk]) * x)
            w += U * STEP
        while w < n_words:
            if q4:
                blk = w >> 1
                k = w & 1
                xlo = xq64[t, blk * 4 + k]
                xhi = xq64[t, blk * 4 + 2 + k]
                x = xd[t, blk]
                for i in range(R):
                    lo, hi = _q4_nib(qs[rr[i], w])
                    acc[i] += np.float32(_q4_dot(lo, hi, xlo, xhi)) * (np.float32(d[rr[i], blk]) * x)
            else:
                blk = w >> 2
                xv = xq64[t, w]
                x = xd[t, blk]
                for i in range(R):
                    acc[i] += np.float32(_q8_dot(qs[rr[i], w], xv)) * (np.float32(d[rr[i], blk]) * x)
            w += STEP
        if S == 1:
            for i in range(R):
                a = warp_sum(acc[i])
                r = r0 + i
                if lane == i and r < rows:
                    if has_bias:
                        a += b[r]
                    y[t, r] = a
                    if has_res:
                        y2[t, r] = a + res[t, r]
        else:
            parts = cuda.shared.array((MV_MAX_WARPS, R), dtype=np.float32)
            for i in range(R):
                a = warp_sum(acc[i])
                if lane == 0:
                    parts[warp, i] = a
            cuda.syncthreads()
            r = r0 + lane
            if part == 0 and lane < R and r < rows:
                a = parts[warp, lane]
                for k in range(1, S):
                    a += parts[warp + k, lane]
                if has_bias:
                    a += b[r]
                y[t, r] = a
                if has_res:
                    y2[t, r] = a + res[t, r]

    return mv


# rows per warp for the decode matvec and 8-byte words per lane per trip. The grid of
# benchmarks/tune_gpu_decode.py on the H100 (2026-11-26) put Q4_0 at four rows x two words (2.68 ms
# of graph time a Mistral-7B step) and Q8_0 at one row x four words (3.76 ms).
# EMBEDKIT_MV_ROWS_Q4 / _Q8 and EMBEDKIT_MV_WORDS_Q4 / _Q8 override them for measurements.
_MV_ROWS = {
    "Q4_0": int(os.environ.get("EMBEDKIT_MV_ROWS_Q4", "4")),
    "Q8_0": int(os.environ.get("EMBEDKIT_MV_ROWS_Q8", "1")),
}
_MV_WORDS = {
    "Q4_0": int(os.environ.get("EMBEDKIT_MV_WORDS_Q4", "2")),
    "Q8_0": int(os.environ.get("EMBEDKIT_MV_WORDS_Q8", "4")),
}
# a launch whose row groups come to fewer warps than this gets split-K (see _make_mv_rows): 2, 4, ...
# warps a group, up to MV_WARPS; 0 turns it off
MV_SPLIT_MIN_WARPS = int(os.environ.get("EMBEDKIT_MV_SPLIT_MIN_WARPS", "2048"))
_MV_KERNELS: dict = {}


def _mv_kernel(ggml_name: str, n_rows: list[int]):
    """(kernel, rows per warp, warps per row group) of the multi-matrix matvec of a repacked type
    over matrices of `n_rows` rows."""
    rows, words = _MV_ROWS[ggml_name], _MV_WORDS[ggml_name]
    groups = sum(-(-r // rows) for r in n_rows)
    split = 1
    while MV_SPLIT_MIN_WARPS and groups * split < MV_SPLIT_MIN_WARPS and split * 2 <= MV_WARPS:
        split *= 2
    if words == 4 and split == 1 and rows == 1:
        return (mv_q4_0r if ggml_name == "Q4_0" else mv_q8_0r), 1, 1
    key = (ggml_name, rows, words, split)
    if key not in _MV_KERNELS:
        _MV_KERNELS[key] = _make_mv_rows(ggml_name == "Q4_0", rows, words, split)
    return _MV_KERNELS[key], rows, split


def matvec_multi(ggml_name: str, mats, xq64, xd, res=None, y2=None, stream=0) -> None:
    """y_i = W_i x (+ b_i) for up to three repacked Q4_0/Q8_0 matrices sharing the activations, in
    one launch. `mats`: [(qs uint8, d float16, bias float32 or None, y float32 [n, rows_i])].
    With `res` (one matrix only) also y2 = y + res."""
    if not 1 <= len(mats) <= 3:
        raise ValueError("matvec_multi takes one to three matrices")
    if res is not None and len(mats) != 1:
        raise ValueError("a fused residual needs a single matrix")
    n = mats[0][3].shape[0]
    has_bias = any(m[2] is not None for m in mats)
    if has_bias and not all(m[2] is not None for m in mats):
        raise ValueError("matvec_multi: give a bias for every matrix or for none")
    args = []
    total = 0
    for i in range(3):
        # unused slots repeat the first matrix with a row count of 0
        qs, d, b, y = mats[i] if i < len(mats) else (mats[0][0], mats[0][1], None, mats[0][3])
        rows = y.shape[1] if i < len(mats) else 0
        total += rows
        args += [qs.view(np.uint64), d, y, b if b is not None else y[0], rows]
    has_res = res is not None
    y0 = mats[0][3]
    kernel, per_warp, split = _mv_kernel(ggml_name, [m[3].shape[1] for m in mats])
    total = sum(-(-m[3].shape[1] // per_warp) for m in mats) * split  # warps
    fast(kernel)[(math.ceil(total / MV_WARPS), n), MV_WARPS * WARP, stream](
        xq64, xd, *args, has_bias, res if has_res else y0, y2 if has_res else y0, has_res
    )


# -- float16 dequantization for the prompt GEMMs ----------------------------------------------------
# A warp writes one quant block (32 consecutive float16) per step, eight blocks per warp, eight
# warps per CUDA block: coalesced 64-byte stores.

DQ_BLOCKS_PER_WARP = 8
DQ_WARPS = 8


@cuda.jit
def dequant_f16_q4_0r(qs, d, out):
    """out float16 [rows, nb*32] = Q4_0R (qs uint8 [rows, nb*16], d float16 [rows, nb])."""
    r = cuda.blockIdx.y
    lane = cuda.threadIdx.x % WARP
    b0 = (cuda.blockIdx.x * DQ_WARPS + cuda.threadIdx.x // WARP) * DQ_BLOCKS_PER_WARP
    nb = d.shape[1]
    for i in range(DQ_BLOCKS_PER_WARP):
        b = b0 + i
        if b < nb:
            q = np.int32(qs[r, b * 16 + (lane & 15)])
            q = (q & 15) if lane < 16 else (q >> 4)
            out[r, b * 32 + lane] = np.float16(np.float32(d[r, b]) * np.float32(q - 8))


@cuda.jit
def dequant_f16_q8_0r(qs, d, out):
    """out float16 [rows, nb*32] = Q8_0R (qs uint8 [rows, nb*32], d float16 [rows, nb])."""
    r = cuda.blockIdx.y
    lane = cuda.threadIdx.x % WARP
    b0 = (cuda.blockIdx.x * DQ_WARPS + cuda.threadIdx.x // WARP) * DQ_BLOCKS_PER_WARP
    nb = d.shape[1]
    for i in range(DQ_BLOCKS_PER_WARP):
        b = b0 + i
        if b < nb:
            q = np.int32(qs[r, b * 32 + lane])
            if q >= 128:
                q -= 256
            out[r, b * 32 + lane] = np.float16(np.float32(d[r, b]) * np.float32(q))


def dequantize_f16(ggml_name: str, qs, d, out, stream=0) -> None:
    """out float16 [rows, n_cols] = a repacked Q4_0/Q8_0 matrix."""
    rows, nb = d.shape
    per_block = DQ_WARPS * DQ_BLOCKS_PER_WARP
    kernel = dequant_f16_q4_0r if ggml_name == "Q4_0" else dequant_f16_q8_0r
    fast(kernel)[(math.ceil(nb / per_block), rows), DQ_WARPS * WARP, stream](qs, d, out)
