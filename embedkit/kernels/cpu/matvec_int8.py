"""Decode matvec with integer activations (registry path `cpu.int16`), for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K
and Q6_K (block dots in `int8dot`): x in int16 blocks of 32 (`quantize_activations16`).

x ~= xd[b] * xq[32 b : 32 b + 32]; per element the error is at most |xd[b]| / 2, so a row's relative error is
about 1e-5 of |y| on random data (tests bound it). (llama.cpp's 8-bit rounding is `ggml_exact`'s, bit for bit.)
Signature: `(w uint8 [n_rows, row_bytes], xq int16 [n], xd float32 [n // 32], xsum float32 [n // 32], y)`
(+ `r0, r1` for the serial `rows_*` kernels). On AVX-512 targets the block dots prefetch the weights 4 KiB ahead
(`isa.PREFETCH_BYTES`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from embedkit.kernels.cpu.int8dot import (
    dot4_q4_0,
    dot4_q4_1,
    dot4_q5_0,
    dot4_q5_1,
    dot4_q8_0,
    dot_row_q4_k,
    dot_row_q6_k,
)
from embedkit.kernels.cpu.matvec_legacy import FAST, store4


# Both loops are written for LLVM to vectorise (a batched decode step quantizes ~70 activation rows of 8 tokens; the
# plain loops took ~3 ns a value): max|x| as the largest of the values' bits with the sign cleared (for non-negative
# floats the integer order is the float order: the same maximum, exactly), and clamping before the rounding, which
# gives the same integers as clamping after it (levels is an integer). For finite x the results are bit for bit
# those of `rint(x * (levels / max|x|))` clamped.
@njit(cache=True)
def quantize_activations16(x, xq, xd, xsum):
    """x float32 [n] (contiguous) -> xq int16 [n] with one scale per 32 elements: x[32 b + i] ~= xd[b] * xq[32 b + i],
    xd[b] = max|x| / 32767 over the block, xsum[b] = xd[b] * sum(xq of the block).

    Per element the error is at most xd[b] / 2, so decode results stay within ~1e-5 of float32 arithmetic."""
    bits = x.view(np.uint32)
    box = np.empty(1, dtype=np.uint32)  # the bit cast of a block's maximum
    top = np.float32(32767.0)
    for b in range(x.shape[0] // 32):
        xb, qb, ib = x[32 * b : 32 * b + 32], xq[32 * b : 32 * b + 32], bits[32 * b : 32 * b + 32]
        m = np.uint32(0)
        # a trip count LLVM cannot see is 32: a constant one is fully unrolled before the vectoriser runs, into a
        # chain of 32 scalar compare-and-moves
        for i in range(min(32, x.shape[0] - 32 * b)):
            a = ib[i] & np.uint32(0x7FFFFFFF)
            m = a if a > m else m
        box[0] = m
        amax = box.view(np.float32)[0]
        inv = top / amax if amax > np.float32(0.0) else np.float32(0.0)
        qsum = np.int32(0)
        for i in range(min(32, x.shape[0] - 32 * b)):
            v = xb[i] * inv
            v = top if v > top else (-top if v < -top else v)
            q = np.int32(np.rint(v))
            qb[i] = q
            qsum += q
        d = amax / top
        xd[b] = d
        xsum[b] = d * np.float32(qsum)


# Each type has `rows_<type>_i8(w, xq, xd, xsum, y, r0, r1)`, the serial kernel over rows [r0, r1) (r0 a
# multiple of 4), called directly for small matrices, and `matvec_<type>_i8(w, xq, xd, xsum, y)`, which runs
# it over chunks of CHUNK_ROWS rows in parallel. Numba hands each thread an equal share of the chunks: 64 rows
# split a 896-row matrix (Qwen2.5's ffn_down, attn_q/o) 7/7 over two threads, where 256 gave 2/2 chunks of
# 512 and 384 rows. Both are `int16_kernels(<type>)`, compiled over the type's block dot.
CHUNK_ROWS = 64


@njit(cache=True, inline="always")
def _dot_row_q6_k(w, r, xq, xd, xsum):
    return dot_row_q6_k(w, r, xq, xd)  # Q6_K has no mins: no xsum term


# the block dots of each type (int8dot): four rows at a time for the 32-element types (ggml_vec_dot_<type>_q8_0
# / _q8_1), one row at a time for the K-quants (rows side by side measured slower than reading the bytes in
# address order)
_DOT4 = {"q8_0": dot4_q8_0, "q4_0": dot4_q4_0, "q4_1": dot4_q4_1, "q5_0": dot4_q5_0, "q5_1": dot4_q5_1}
_DOT1 = {"q4_k": dot_row_q4_k, "q6_k": _dot_row_q6_k}


def row_range(suffix, w, xq, xd, xsum, y, r0, r1):
    """In jitted code: y[r0:r1] = rows [r0, r1) of W (type `suffix`, a compile-time string) against the int16
    activations; resolved at typing time to the type's block dot, inlined."""
    raise TypeError("row_range runs only in jitted code")


@overload(row_range, prefer_literal=True, inline="always")
def _row_range(suffix, w, xq, xd, xsum, y, r0, r1):
    if not isinstance(suffix, types.StringLiteral):
        return None
    if suffix.literal_value in _DOT4:
        dot4 = _DOT4[suffix.literal_value]

        def rows4(suffix, w, xq, xd, xsum, y, r0, r1):
            last = w.shape[0] - 1
            for r in range(r0, r1, 4):
                a0, a1, a2, a3 = dot4(w, r, min(r + 1, last), min(r + 2, last), min(r + 3, last), xq, xd, xsum)
                store4(y, r, a0, a1, a2, a3)

        return rows4
    dot = _DOT1[suffix.literal_value]

    def rows1(suffix, w, xq, xd, xsum, y, r0, r1):
        for r in range(r0, r1):
            y[r] = dot(w, r, xq, xd, xsum)

    return rows1


@functools.cache
def int16_kernels(suffix: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """(`matvec_<suffix>_i8`, `rows_<suffix>_i8`) of a type on the `cpu.int16` path: the parallel kernel over
    chunks of CHUNK_ROWS rows and the serial one over a row range, compiled once and cached on disk. Both close
    over `suffix`, a string (Numba keys a closure's disk cache on its pickled closure values and treats them as
    constants), so the type's block dot is picked at compile time."""

    def matvec(w, xq, xd, xsum, y):
        n = w.shape[0]
        for c in prange((n + CHUNK_ROWS - 1) // CHUNK_ROWS):
            row_range(suffix, w, xq, xd, xsum, y, c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS))

    def rows(w, xq, xd, xsum, y, r0, r1):
        row_range(suffix, w, xq, xd, xsum, y, r0, r1)

    matvec.__name__ = matvec.__qualname__ = f"matvec_{suffix}_i8"
    rows.__name__ = rows.__qualname__ = f"rows_{suffix}_i8"
    return njit(parallel=True, cache=True, fastmath=FAST)(matvec), njit(cache=True, fastmath=FAST)(rows)


matvec_q8_0_i8, rows_q8_0_i8 = int16_kernels("q8_0")
matvec_q4_0_i8, rows_q4_0_i8 = int16_kernels("q4_0")
matvec_q4_1_i8, rows_q4_1_i8 = int16_kernels("q4_1")
matvec_q5_0_i8, rows_q5_0_i8 = int16_kernels("q5_0")
matvec_q5_1_i8, rows_q5_1_i8 = int16_kernels("q5_1")
matvec_q4_k_i8, rows_q4_k_i8 = int16_kernels("q4_k")
matvec_q6_k_i8, rows_q6_k_i8 = int16_kernels("q6_k")
