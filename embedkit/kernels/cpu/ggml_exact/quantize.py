"""Activation quantizers whose bytes equal llama.cpp's x86 build (quantize_row_q8_0/q8_1/q8_K).

These quantize the float32 activations (src1 of a matmul) into the block type the weight's vec_dot
consumes. They are not gguf-py's reference quantizers: the AVX path of Q8_0/Q8_1 multiplies by
id = 127/amax and rounds half to even, whereas the reference divides and rounds half away from zero.

- Q8_0 (34 bytes / 32 values): fp16 d = amax/127, int8 q = rint(x * (127/amax)).
- Q8_1 (36 bytes / 32 values): as Q8_0, plus fp16 s = fp16(d * sum(q)) after d.
- Q8_K (292 bytes / 256 values): float32 d, int8 q[256], int16 bsums[16]. x86 ggml uses the scalar
  reference compiled without FMA: pivot = the first element of largest magnitude (sign kept),
  iscale = -127/pivot, q = min(127, rint(iscale * x)), d = 1/iscale. An all-zero block gets d = 0,
  q = 0 and (unlike ggml, which leaves them unwritten; no dot product reads them then) bsums = 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import store_f16

_F127 = np.float32(127.0)


@njit(cache=True, inline="always")
def _q8_block(src, o, dst, qo):
    """Quantize src[o:o+32] AVX-style into dst[qo:qo+32]; returns (d, sum of the quants)."""
    amax = np.float32(0.0)
    for j in range(32):
        amax = max(amax, abs(src[o + j]))
    d = amax / _F127
    inv = _F127 / amax if amax != np.float32(0.0) else np.float32(0.0)
    total = 0
    for j in range(32):
        q = np.int32(np.rint(src[o + j] * inv))
        total += q
        dst[qo + j] = np.uint8(q & 0xFF)
    return d, total


@njit(parallel=True, cache=True, nogil=True)
def _quantize_q8_0_or_1(x, out, with_sum):
    # Q8_0 blocks are (d, q[32]); Q8_1 blocks (d, s = d * sum(q), q[32])
    nb = x.shape[1] // 32
    size = 36 if with_sum else 34
    head = 4 if with_sum else 2
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            d, total = _q8_block(src, b * 32, dst, b * size + head)
            store_f16(dst, b * size, d)
            if with_sum:
                store_f16(dst, b * size + 2, d * np.float32(total))


@njit(parallel=True, cache=True, nogil=True)
def _quantize_q8_K(x, out):
    nb = x.shape[1] // 256
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for b in range(nb):
            o = b * 256
            ob = b * 292
            amax = np.float32(0.0)
            pivot = np.float32(0.0)
            for j in range(256):
                a = abs(src[o + j])
                if a > amax:
                    amax = a
                    pivot = src[o + j]
            if amax == np.float32(0.0):
                dst[ob:ob + 292] = 0
                continue
            iscale = np.float32(-127.0) / pivot
            for g in range(16):
                bsum = 0
                for j in range(g * 16, g * 16 + 16):
                    q = min(np.int32(np.rint(iscale * src[o + j])), 127)
                    bsum += q
                    dst[ob + 4 + j] = np.uint8(q & 0xFF)
                dst[ob + 260 + 2 * g] = np.uint8(bsum & 0xFF)
                dst[ob + 261 + 2 * g] = np.uint8((bsum >> 8) & 0xFF)
            dst[ob:ob + 4].view(np.float32)[0] = np.float32(1.0) / iscale


def _prepare(x: np.ndarray, block: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % block:
        raise ValueError(f"expected float32 [n, k] with k a multiple of {block}, got {x.shape}")
    return x


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 rows of float32 x [n, k] (k % 32 == 0) as ggml x86 makes them: uint8 [n, k // 32 * 34]."""
    x = _prepare(x, 32)
    out = np.empty((x.shape[0], x.shape[1] // 32 * 34), np.uint8)
    _quantize_q8_0_or_1(x, out, False)
    return out


def quantize_q8_1(x: np.ndarray) -> np.ndarray:
    """Q8_1 rows of float32 x [n, k] (k % 32 == 0) as ggml x86 makes them: uint8 [n, k // 32 * 36]."""
    x = _prepare(x, 32)
    out = np.empty((x.shape[0], x.shape[1] // 32 * 36), np.uint8)
    _quantize_q8_0_or_1(x, out, True)
    return out


def quantize_q8_K(x: np.ndarray) -> np.ndarray:
    """Q8_K rows of float32 x [n, k] (k % 256 == 0) as ggml x86 makes them: uint8 [n, k // 256 * 292]."""
    x = _prepare(x, 256)
    out = np.empty((x.shape[0], x.shape[1] // 256 * 292), np.uint8)
    _quantize_q8_K(x, out)
    return out
