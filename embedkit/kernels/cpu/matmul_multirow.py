"""`y = x @ W.T` for a few activation rows (a continuous-batching decode step): each quantized weight row is
read once, dequantized to float32 into a small per-thread buffer and multiplied with every activation row
(registry path `cpu.multirow`).

One generic driver (`multirow_matmul`) takes the type's row decoder as an argument and is inlined into one
cached parallel kernel per type (`multirow_kernel(<type>)`, named `multirow_<type>`): a decoder
`decode_<type>(row, out)` turns one GGUF row (uint8 [row_bytes]) into float32 `out` [n_cols], block by block,
with ggml's dequantization formulas. The
driver decodes TILE_W weight rows at a time into an L1-sized buffer, then runs a TILE_W x TILE_X register tile
of float32 FMAs over the columns (4 weight rows x 4 activation rows: 16 vector accumulators, 8 loads per 16
FMAs), in parallel over groups of weight rows (`prange`), so every kernel thread works.
Activation rows past the last are clamped to it (their sums are computed and dropped).

Accuracy: float32 weights identical to `dequant_*` up to FMA contraction, float32 accumulation in vector
lanes (like the BLAS path it replaces for small batches); tests/test_kernels_multirow.py checks it
against float64 numpy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.dequant import kquant_scale_min
from embedkit.kernels.cpu.halfbits import load_f16

FAST = {"reassoc", "contract", "nsz", "arcp"}
TILE_W = 4  # weight rows decoded together
TILE_X = 4  # activation rows per register tile
# weight-row groups handed to each thread at a time (prange chunks): each allocates its buffer once
_GROUPS_PER_CHUNK = 16


# -- row decoders, one per type: (row uint8 [row_bytes], out float32 [n_cols]) ---------------------------


@njit(cache=True, inline="always")
def _trips(out, o, n):
    """n, as a count LLVM cannot see is constant (min(n, elements left from o)): a loop of a constant 16 or 32
    trips is fully unrolled before the loop vectoriser runs and ends up scalar (2.4x slower for Q8_0)."""
    return min(n, out.shape[0] - o)


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q4_0(row, out):
    """Q4_0 blocks of 18 bytes: d f16, 16 bytes of 4-bit quants (offset 8)."""
    for b in range(out.shape[0] // 32):
        o = 18 * b
        d = load_f16(row, o)
        for j in range(_trips(out, 32 * b, 16)):
            q = np.int32(row[o + 2 + j])
            out[32 * b + j] = np.float32((q & 0xF) - 8) * d
            out[32 * b + 16 + j] = np.float32((q >> 4) - 8) * d


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q4_1(row, out):
    """Q4_1 blocks of 20 bytes: d f16, m f16, 16 bytes of 4-bit quants; value q * d + m."""
    for b in range(out.shape[0] // 32):
        o = 20 * b
        d = load_f16(row, o)
        m = load_f16(row, o + 2)
        for j in range(_trips(out, 32 * b, 16)):
            q = np.int32(row[o + 4 + j])
            out[32 * b + j] = np.float32(q & 0xF) * d + m
            out[32 * b + 16 + j] = np.float32(q >> 4) * d + m


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q5_0(row, out):
    """Q5_0 blocks of 22 bytes: d f16, qh u32 (5th bits), 16 bytes of low nibbles (offset 16)."""
    for b in range(out.shape[0] // 32):
        o = 22 * b
        d = load_f16(row, o)
        qh = (np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8) | (np.int32(row[o + 4]) << 16)
              | (np.int32(row[o + 5]) << 24))  # fmt: skip
        for j in range(_trips(out, 32 * b, 16)):
            q = np.int32(row[o + 6 + j])
            lo = (q & 0xF) | (((qh >> j) << 4) & 0x10)
            hi = (q >> 4) | ((qh >> (j + 12)) & 0x10)
            out[32 * b + j] = np.float32(lo - 16) * d
            out[32 * b + 16 + j] = np.float32(hi - 16) * d


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q5_1(row, out):
    """Q5_1 blocks of 24 bytes: d f16, m f16, qh u32, 16 bytes of low nibbles; value q * d + m."""
    for b in range(out.shape[0] // 32):
        o = 24 * b
        d = load_f16(row, o)
        m = load_f16(row, o + 2)
        qh = (np.int32(row[o + 4]) | (np.int32(row[o + 5]) << 8) | (np.int32(row[o + 6]) << 16)
              | (np.int32(row[o + 7]) << 24))  # fmt: skip
        for j in range(_trips(out, 32 * b, 16)):
            q = np.int32(row[o + 8 + j])
            lo = (q & 0xF) | (((qh >> j) << 4) & 0x10)
            hi = (q >> 4) | ((qh >> (j + 12)) & 0x10)
            out[32 * b + j] = np.float32(lo) * d + m
            out[32 * b + 16 + j] = np.float32(hi) * d + m


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q8_0(row, out):
    """Q8_0 blocks of 34 bytes: d f16, 32 signed bytes."""
    for b in range(out.shape[0] // 32):
        o = 34 * b
        d = load_f16(row, o)
        for j in range(_trips(out, 32 * b, 32)):
            out[32 * b + j] = np.float32(np.int8(row[o + 2 + j])) * d


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q4_k(row, out):
    """Q4_K super-blocks of 144 bytes: d, dmin f16; 12 bytes of 6-bit scales/mins; 128 bytes of nibbles."""
    for b in range(out.shape[0] // 256):
        o = 144 * b
        d = load_f16(row, o)
        dmin = load_f16(row, o + 2)
        for j in range(4):
            sc0, m0 = kquant_scale_min(row, o + 4, 2 * j)
            sc1, m1 = kquant_scale_min(row, o + 4, 2 * j + 1)
            d0 = d * np.float32(sc0)
            d1 = d * np.float32(sc1)
            n0 = dmin * np.float32(m0)
            n1 = dmin * np.float32(m1)
            qo = o + 16 + 32 * j
            yo = 256 * b + 64 * j
            for i in range(_trips(out, yo, 32)):
                q = np.int32(row[qo + i])
                out[yo + i] = d0 * np.float32(q & 0xF) - n0
                out[yo + 32 + i] = d1 * np.float32(q >> 4) - n1


@njit(cache=True, inline="always", fastmath=FAST)
def decode_q6_k(row, out):
    """Q6_K super-blocks of 210 bytes: ql 128 (low nibbles), qh 64 (2 high bits), 16 int8 scales, d f16."""
    for b in range(out.shape[0] // 256):
        o = 210 * b
        d = load_f16(row, o + 208)
        for h in range(2):
            ql = o + 64 * h
            qh = o + 128 + 32 * h
            sc = o + 192 + 8 * h
            yo = 256 * b + 128 * h
            for k in range(2):  # elements 16k .. 16k + 15 of each quarter share scale index k
                s0 = d * np.float32(np.int8(row[sc + k]))
                s1 = d * np.float32(np.int8(row[sc + k + 2]))
                s2 = d * np.float32(np.int8(row[sc + k + 4]))
                s3 = d * np.float32(np.int8(row[sc + k + 6]))
                for i in range(_trips(out, yo, 16)):
                    m = 16 * k + i
                    a = np.int32(row[ql + m])
                    c = np.int32(row[ql + 32 + m])
                    e = np.int32(row[qh + m])
                    out[yo + m] = s0 * np.float32(((a & 0xF) | ((e & 3) << 4)) - 32)
                    out[yo + 32 + m] = s1 * np.float32(((c & 0xF) | (((e >> 2) & 3) << 4)) - 32)
                    out[yo + 64 + m] = s2 * np.float32(((a >> 4) | (((e >> 4) & 3) << 4)) - 32)
                    out[yo + 96 + m] = s3 * np.float32(((c >> 4) | (((e >> 6) & 3) << 4)) - 32)


# -- the driver -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always", fastmath=FAST)
def _tile(wb, x, y, n0, n_live, r0, n_x):
    """y[r0 .. r0 + 3, n0 .. n0 + 3] from decoded weight rows wb [4, n_cols] and activations x [n_x, n_cols]
    (activation rows past n_x - 1 and weight rows past n_live - 1 are computed from clamped rows, not stored)."""
    last = n_x - 1
    x0 = x[r0]
    x1 = x[min(r0 + 1, last)]
    x2 = x[min(r0 + 2, last)]
    x3 = x[min(r0 + 3, last)]
    w0, w1, w2, w3 = wb[0], wb[1], wb[2], wb[3]
    a00 = a01 = a02 = a03 = np.float32(0.0)
    a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = np.float32(0.0)
    a30 = a31 = a32 = a33 = np.float32(0.0)
    for i in range(x.shape[1]):
        v0, v1, v2, v3 = w0[i], w1[i], w2[i], w3[i]
        e0, e1, e2, e3 = x0[i], x1[i], x2[i], x3[i]
        a00 += v0 * e0
        a01 += v0 * e1
        a02 += v0 * e2
        a03 += v0 * e3
        a10 += v1 * e0
        a11 += v1 * e1
        a12 += v1 * e2
        a13 += v1 * e3
        a20 += v2 * e0
        a21 += v2 * e1
        a22 += v2 * e2
        a23 += v2 * e3
        a30 += v3 * e0
        a31 += v3 * e1
        a32 += v3 * e2
        a33 += v3 * e3
    _store(y, r0, n0, n_x, n_live, 0, a00, a01, a02, a03)
    _store(y, r0, n0, n_x, n_live, 1, a10, a11, a12, a13)
    _store(y, r0, n0, n_x, n_live, 2, a20, a21, a22, a23)
    _store(y, r0, n0, n_x, n_live, 3, a30, a31, a32, a33)


@njit(cache=True, inline="always")
def _store(y, r0, n0, n_x, n_live, k, s0, s1, s2, s3):
    """y[r0 .. r0 + 3, n0 + k] = s0..s3 for the activation rows that exist (k < n_live)."""
    if k >= n_live:
        return
    n = n0 + k
    y[r0, n] = s0
    if r0 + 1 < n_x:
        y[r0 + 1, n] = s1
    if r0 + 2 < n_x:
        y[r0 + 2, n] = s2
    if r0 + 3 < n_x:
        y[r0 + 3, n] = s3


@njit(inline="always", fastmath=FAST)
def multirow_matmul(decode, w, x, y):
    """y [n_x, n_rows] = x [n_x, n_cols] @ W.T, W = `w` uint8 [n_rows, row_bytes] decoded row by row with
    `decode(row, out)` (one of this module's `decode_<type>`). Inlined into each type's kernel
    (`multirow_kernel`): a kernel that takes a decoder as an argument cannot be cached across processes (the
    argument's type is made anew in each), so every process would compile it again, ~2 s per type."""
    n_rows = w.shape[0]
    n_x, n_cols = x.shape
    n_groups = (n_rows + TILE_W - 1) // TILE_W
    n_chunks = (n_groups + _GROUPS_PER_CHUNK - 1) // _GROUPS_PER_CHUNK
    for c in prange(n_chunks):
        wb = np.empty((TILE_W, n_cols), dtype=np.float32)
        g1 = min(n_groups, (c + 1) * _GROUPS_PER_CHUNK)
        for g in range(c * _GROUPS_PER_CHUNK, g1):
            n0 = TILE_W * g
            n_live = min(TILE_W, n_rows - n0)
            for k in range(TILE_W):
                decode(w[n0 + min(k, n_live - 1)], wb[k])
            for r0 in range(0, n_x, TILE_X):
                _tile(wb, x, y, n0, n_live, r0, n_x)


# -- one cached parallel kernel per type (the driver inlined over its decoder) ---------------------------------

# the `kernel_suffix` of each type with a row decoder, in the order of `multirow_kernel`'s branches
DECODER_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q6_k")


@functools.cache
def multirow_kernel(suffix: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    """The parallel kernel `multirow_<suffix>(w, x, y)`: `multirow_matmul` over rows of the type whose decoder
    is `decode_<suffix>` (a quant type's `kernel_suffix`), compiled once and cached on disk.

    The kernel closes over the decoder's index, an int, and branches on it: Numba keys a closure's disk cache
    on its pickled closure values, the same in every process for an int (a dispatcher's are not), and prunes
    the branches a constant rules out before compiling, so each type's kernel holds only its own decoder and
    loads from the cache as a module-level one does. Its name (cache file, profiles) is `multirow_<suffix>`."""
    decoder = DECODER_TYPES.index(suffix)

    def kernel(w, x, y):
        if decoder == 0:
            multirow_matmul(decode_q4_0, w, x, y)
        elif decoder == 1:
            multirow_matmul(decode_q4_1, w, x, y)
        elif decoder == 2:
            multirow_matmul(decode_q5_0, w, x, y)
        elif decoder == 3:
            multirow_matmul(decode_q5_1, w, x, y)
        elif decoder == 4:
            multirow_matmul(decode_q8_0, w, x, y)
        elif decoder == 5:
            multirow_matmul(decode_q4_k, w, x, y)
        else:
            multirow_matmul(decode_q6_k, w, x, y)

    kernel.__name__ = kernel.__qualname__ = f"multirow_{suffix}"
    return njit(parallel=True, cache=True, fastmath=FAST)(kernel)
