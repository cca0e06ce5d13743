"""float32 -> GGUF rows for the block types of the `cpu.quantize` path: the row-parallel driver of `block_rows`,
compiled per type over that type's block encoder (`quantize_kernel(t)`; `kernels.cpu.dispatch` holds one per type).

A block encoder `block_<type>(src, xo, dst, o)` (for the Q4/Q5 types, `_encode_32(src, xo, dst, o, *constants)`)
quantizes `src[xo:xo + block_size]` into the block at `dst[o:o + type_size]`. Legacy types (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) mirror ggml's `quantize_row_*_ref` with gguf-py's float32 arithmetic and rounding (`np_roundf`,
`trunc(x + 0.5)`), so the bytes are identical to `gguf.quants.quantize`; Q4_K and Q6_K are llama.cpp's
reference quantizers (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref`, no importance matrix) on the scale
searches of `kquant_fit`. The kernel's signature is `(x float32 [n_rows, n_cols], out uint8 [n_rows,
row_bytes])`; block bytes and elements come from the quant registry as compile-time constants and the
encoder is inlined.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from numba import njit

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.block_rows import block_rows_kernel
from embedkit.kernels.cpu.dequant import kquant_scale_min
from embedkit.kernels.cpu.halfbits import store_f16
from embedkit.kernels.cpu.kquant_fit import GROUP_MAX_EPS, f16_round, make_qkx2_quants, make_qx_quants, nearest_int
from embedkit.quant import QUANT_TYPES

# -- 32-element blocks -----------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _inverse(d):
    if d == np.float32(0.0):
        return np.float32(0.0)
    return np.float32(1.0) / d


@njit(cache=True, inline="always")
def _signed_absmax(x, o):
    """The element of x[o:o+32] with the largest magnitude (first one on ties), sign kept."""
    amax = np.float32(0.0)
    vmax = np.float32(0.0)
    for j in range(32):
        v = x[o + j]
        if abs(v) > amax:
            amax = abs(v)
            vmax = v
    return vmax


@njit(cache=True, inline="always")
def _min_max(x, o):
    """(min, max) of x[o:o+32]."""
    vmin = x[o]
    vmax = x[o]
    for j in range(1, 32):
        vmin = min(vmin, x[o + j])
        vmax = max(vmax, x[o + j])
    return vmin, vmax


@njit(cache=True, inline="always")
def _round_away(v):
    """Round half away from zero in float32 (gguf-py's np_roundf)."""
    a = abs(v)
    f = np.float32(math.floor(a))
    b = f + np.float32(math.floor(np.float32(2.0) * (a - f)))
    return -b if v < 0 else b


@njit(cache=True, inline="always")
def _pack_32(src, xo, dst, qo, inv, vmin, bias, nmax):
    """q = min(nmax, trunc((x - vmin) * inv + bias)) for x in src[xo:xo+32], packed as ggml's 4-bit (nmax 15:
    16 bytes of nibbles at dst[qo:], element j low, j + 16 high) or 5-bit blocks (nmax 31: qh u32 of 5th bits
    at dst[qo:qo + 4], then the nibbles). vmin 0 leaves x as it is (x - 0 is x in IEEE arithmetic)."""
    qs = qo + 4 if nmax == 31 else qo
    qh = np.uint32(0)
    for j in range(16):
        q0 = min(nmax, np.int32((src[xo + j] - vmin) * inv + bias))
        q1 = min(nmax, np.int32((src[xo + j + 16] - vmin) * inv + bias))
        dst[qs + j] = np.uint8((q0 & 0xF) | ((q1 & 0xF) << 4))
        qh |= np.uint32(q0 >> 4) << j
        qh |= np.uint32(q1 >> 4) << (j + 16)
    if nmax == 31:
        for k in range(4):
            dst[qo + k] = np.uint8((qh >> (8 * k)) & 0xFF)


@njit(cache=True, inline="always")
def block_q8_0(src, xo, dst, o):
    """Q8_0: d = max|x| / 127, q = round(x / d)."""
    amax = np.float32(0.0)
    for j in range(32):
        amax = max(amax, abs(src[xo + j]))
    d = amax / np.float32(127.0)
    inv = _inverse(d)
    store_f16(dst, o, d)
    for j in range(32):
        q = np.int32(_round_away(src[xo + j] * inv))
        dst[o + 2 + j] = np.uint8(q & 0xFF)


@njit(cache=True, inline="always")
def _encode_32(src, xo, dst, o, nmax, with_min):
    """A Q4/Q5 block of src[xo:xo+32] at dst[o:] (nmax 15 or 31). With a min (Q4_1, Q5_1): d = (max - min) /
    nmax, m = min, q = min(nmax, trunc((x - m) / d + 0.5)); without (Q4_0, Q5_0): d = (signed absmax) /
    -(nmax + 1) / 2, q = min(nmax, trunc(x / d + (nmax + 1) / 2 + 0.5))."""
    if with_min:
        vmin, vmax = _min_max(src, xo)
        d = (vmax - vmin) / np.float32(nmax)
        store_f16(dst, o, d)
        store_f16(dst, o + 2, vmin)
        _pack_32(src, xo, dst, o + 4, _inverse(d), vmin, np.float32(0.5), nmax)
    else:
        half = np.float32((nmax + 1) // 2)
        d = _signed_absmax(src, xo) / -half
        store_f16(dst, o, d)
        _pack_32(src, xo, dst, o + 2, _inverse(d), np.float32(0.0), half + np.float32(0.5), nmax)


# the Q4/Q5 types, one `_encode_32` with their constants: (nmax, with a min). Q4_0: d = (signed absmax) / -8,
# q = min(15, trunc(x / d + 8.5)); Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d + 0.5));
# Q5_0 and Q5_1 likewise with 31 and -16, the 5th bits in qh.
_ENCODE_32 = {"q4_0": (15, False), "q4_1": (15, True), "q5_0": (31, False), "q5_1": (31, True)}


# -- 256-element super-blocks ------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def block_q4_k(src, xo, dst, o):
    """Q4_K, as llama.cpp's quantize_row_q4_K_ref: per 32-element sub-block a weighted (scale, min) fit, then
    6-bit sub-block scales/mins against f16 super-block scales d, dmin."""
    L = np.zeros(256, dtype=np.int32)
    laux = np.zeros(32, dtype=np.int32)
    weights = np.zeros(32, dtype=np.float32)
    scales = np.zeros(8, dtype=np.float32)
    mins = np.zeros(8, dtype=np.float32)
    max_scale = np.float32(0.0)
    max_min = np.float32(0.0)
    for j in range(8):
        sum_x2 = np.float32(0.0)
        for i in range(32):
            v = src[xo + 32 * j + i]
            sum_x2 += v * v
        av_x = np.float32(math.sqrt(sum_x2 / np.float32(32.0)))
        for i in range(32):
            weights[i] = av_x + abs(src[xo + 32 * j + i])
        sc, mn = make_qkx2_quants(
            32, 15, src, xo + 32 * j, weights, L, 32 * j, laux, np.float32(-1.0), np.float32(0.1), 20
        )
        scales[j] = sc
        mins[j] = mn
        if sc > max_scale:
            max_scale = sc
        if mn > max_min:
            max_min = mn
    inv_scale = np.float32(63.0) / max_scale if max_scale > np.float32(0.0) else np.float32(0.0)
    inv_min = np.float32(63.0) / max_min if max_min > np.float32(0.0) else np.float32(0.0)
    for k in range(12):
        dst[o + 4 + k] = 0
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        if j < 4:
            dst[o + 4 + j] = ls
            dst[o + 4 + j + 4] = lm
        else:
            dst[o + 4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            dst[o + 4 + j - 4] |= (ls >> 4) << 6
            dst[o + 4 + j] |= (lm >> 4) << 6
    store_f16(dst, o, max_scale / np.float32(63.0))
    store_f16(dst, o + 2, max_min / np.float32(63.0))
    d_all = f16_round(max_scale / np.float32(63.0))
    m_all = f16_round(max_min / np.float32(63.0))
    for j in range(8):
        sc, mn = kquant_scale_min(dst, o + 4, j)
        d = d_all * np.float32(sc)
        if d == np.float32(0.0):
            continue
        dm = m_all * np.float32(mn)
        for i in range(32):
            L[32 * j + i] = max(0, min(15, nearest_int((src[xo + 32 * j + i] + dm) / d)))
    for j in range(4):
        for i in range(32):
            dst[o + 16 + 32 * j + i] = L[64 * j + i] | (L[64 * j + 32 + i] << 4)


@njit(cache=True, inline="always")
def block_q6_k(src, xo, dst, o):
    """Q6_K, as llama.cpp's quantize_row_q6_K_ref: per 16-element group a signed scale, then int8 group
    scales against one f16 scale."""
    L = np.zeros(256, dtype=np.int32)
    scales = np.zeros(16, dtype=np.float32)
    max_scale = np.float32(0.0)
    max_abs_scale = np.float32(0.0)
    for g in range(16):
        s = make_qx_quants(16, 32, src, xo + 16 * g, L, 16 * g)
        scales[g] = s
        if abs(s) > max_abs_scale:
            max_abs_scale = abs(s)
            max_scale = s
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(210):
            dst[o + k] = 0
        return
    iscale = np.float32(-128.0) / max_scale
    store_f16(dst, o + 208, np.float32(1.0) / iscale)
    d_all = f16_round(np.float32(1.0) / iscale)
    for g in range(16):
        q = min(127, nearest_int(iscale * scales[g]))
        dst[o + 192 + g] = q & 0xFF
        d = d_all * np.float32(np.int8(q))
        if d == np.float32(0.0):
            continue
        for i in range(16):
            L[16 * g + i] = max(-32, min(31, nearest_int(src[xo + 16 * g + i] / d))) + 32
    for h in range(2):
        for i in range(32):
            e = 128 * h + i
            dst[o + 64 * h + i] = (L[e] & 0xF) | ((L[e + 64] & 0xF) << 4)
            dst[o + 64 * h + 32 + i] = (L[e + 32] & 0xF) | ((L[e + 96] & 0xF) << 4)
            dst[o + 128 + 32 * h + i] = (
                (L[e] >> 4) | ((L[e + 32] >> 4) << 2) | ((L[e + 64] >> 4) << 4) | ((L[e + 96] >> 4) << 6)
            )


# -- one kernel per type ----------------------------------------------------------------------------------------


@functools.cache
def quantize_kernel(t: GGMLType) -> Callable[[np.ndarray, np.ndarray], None]:
    """The parallel kernel `quantize_<type>(x, out)` of a registry block type: rows of `x` (float32 [n_rows,
    n_cols]) encoded block by block with `block_<type>` into `out` (uint8 [n_rows, row_bytes])."""
    q = QUANT_TYPES[t]
    name = f"quantize_{q.kernel_suffix}"
    if q.kernel_suffix in _ENCODE_32:
        return block_rows_kernel(name, _encode_32, q.block_size, q.type_size, _ENCODE_32[q.kernel_suffix])
    return block_rows_kernel(name, globals()[f"block_{q.kernel_suffix}"], q.block_size, q.type_size)
