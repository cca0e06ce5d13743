"""Q5_0 weights repacked once for the int16-activation decode matvec: same bytes per row, cheaper to decode.

Q5_0's fifth bits sit in a separate 32-bit plane per block; spreading them over 32 lanes took about half of
the ~24 instructions per block of `int8dot.dot4_q5_0` (compute-bound at ~14 GB/s on the 2-core dev VM).
The packed layout keeps 22 bytes per 32 weights and groups 4 blocks (88 bytes) of a row:

    bytes  0..7    the 4 blocks' f16 scales d (one vcvtph2ps and one vmulps by xd for the 4 blocks)
    bytes  8..71   16 bytes per block: byte i = (q_i & 31) << 3 | (q_{16+i} >> 2) & 7
    bytes 72..87   one little-endian uint32 per block: bits 2k, 2k+1 = q_{16+2k} & 3,
                   bits 16+2k, 17+2k = q_{17+2k} & 3 (k = 0..7)

with q = (nibble | fifth bit << 4) - 16 the signed weight (two's complement fields), and puts the groups of
4 consecutive rows side by side: row t of the packed array [ceil(n_rows / 4), 4 * row_bytes] holds group 0 of
rows 4t..4t+3, then group 1 of each, ..., so the kernel reads its four rows' bytes in address order. Decoding
a block is then
one sign-extending load to 16-bit lanes, an arithmetic shift for q_0..15, shift left/right for the top 3 bits
of q_16..31, and their low 2 bits from the broadcast uint32 shifted per 32-bit lane by (0, 2, ..., 14) (one
vpsrlvd) and masked. The integer block dot (two vpmaddwd) and the float accumulation (per block,
acc += float(dot) * (d * xd)) are the same operations as `dot4_q5_0` on int16 activations, so the results
are bit-identical (tests/test_kernels_q5_0_packed.py).

Rows need a multiple of 128 columns; `pack_q5_0` leaves the GGUF bytes untouched and returns a new array.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.kernels.cpu.int8dot import (
    _F32,
    _I8,
    _I16,
    _I32,
    _V8F32,
    _V8I32,
    _V16I16,
    _hsum,
    _intrinsic_fn,
    _load,
    _pairs_i32x8,
    _x16_halves,
)
from embedkit.kernels.cpu.isa import prefetch_ahead
from embedkit.kernels.cpu.matvec_legacy import FAST, store4

BLOCK_BYTES = 22  # Q5_0: f16 d, uint32 qh, 16 bytes qs
GROUP_BLOCKS = 4
GROUP_BYTES = GROUP_BLOCKS * BLOCK_BYTES
_QS = 8  # offset of the 4 x 16 bytes of a group
_QH = 8 + 16 * GROUP_BLOCKS  # offset of the 4 uint32 of a group


def can_pack(n_cols: int) -> bool:
    """Whether rows of n_cols Q5_0 weights have the packed layout (whole groups of 4 blocks)."""
    return n_cols % (32 * GROUP_BLOCKS) == 0


@njit(cache=True)
def _weights_q5_0(src, o, q):
    """The 32 signed weights of the Q5_0 block at src[o:o+22] into q (int32 [32])."""
    qh = np.uint32(src[o + 2]) | np.uint32(src[o + 3]) << 8 | np.uint32(src[o + 4]) << 16 | np.uint32(src[o + 5]) << 24
    for i in range(16):
        b = np.int32(src[o + 6 + i])
        q[i] = ((b & 15) | np.int32((qh >> np.uint32(i)) & np.uint32(1)) << 4) - 16
        q[16 + i] = ((b >> 4) | np.int32((qh >> np.uint32(16 + i)) & np.uint32(1)) << 4) - 16


@njit(cache=True, parallel=True)
def _pack_rows(src, dst):
    n_rows = src.shape[0]
    n_groups = src.shape[1] // GROUP_BYTES
    for quad in prange(dst.shape[0]):
        q = np.empty(32, dtype=np.int32)
        out = dst[quad]
        for r in range(4 * quad, min(n_rows, 4 * quad + 4)):
            for g in range(n_groups):
                o_src = g * GROUP_BYTES
                o_dst = (4 * g + r % 4) * GROUP_BYTES
                for j in range(GROUP_BLOCKS):
                    o = o_src + j * BLOCK_BYTES
                    _weights_q5_0(src[r], o, q)
                    out[o_dst + 2 * j] = src[r, o]
                    out[o_dst + 2 * j + 1] = src[r, o + 1]
                    for i in range(16):
                        out[o_dst + _QS + 16 * j + i] = np.uint8(((q[i] & 31) << 3) | ((q[16 + i] >> 2) & 7))
                    low2 = np.uint32(0)
                    for k in range(8):
                        low2 |= np.uint32(q[16 + 2 * k] & 3) << np.uint32(2 * k)
                        low2 |= np.uint32(q[17 + 2 * k] & 3) << np.uint32(16 + 2 * k)
                    for t in range(4):
                        out[o_dst + _QH + 4 * j + t] = np.uint8((low2 >> np.uint32(8 * t)) & np.uint32(255))


def pack_q5_0(rows: np.ndarray) -> np.ndarray:
    """Q5_0 rows (uint8 [n_rows, row_bytes], whole groups of 4 blocks) -> a new uint8 array
    [ceil(n_rows / 4), 4 * row_bytes] in the packed layout (missing rows of the last quad are zeros)."""
    n_rows, row_bytes = rows.shape
    dst = np.zeros(((n_rows + 3) // 4, 4 * row_bytes), dtype=np.uint8)
    _pack_rows(rows, dst)
    return dst


@njit(cache=True)
def _unpack_rows(src, dst):
    n_groups = dst.shape[1] // GROUP_BYTES
    for r in range(dst.shape[0]):
        packed = src[r // 4]
        for g in range(n_groups):
            o_src = (4 * g + r % 4) * GROUP_BYTES
            for j in range(GROUP_BLOCKS):
                o = g * GROUP_BYTES + j * BLOCK_BYTES
                dst[r, o] = packed[o_src + 2 * j]
                dst[r, o + 1] = packed[o_src + 2 * j + 1]
                low2 = np.uint32(0)
                for t in range(4):
                    low2 |= np.uint32(packed[o_src + _QH + 4 * j + t]) << np.uint32(8 * t)
                qh = np.uint32(0)
                for i in range(16):
                    byte = np.int32(packed[o_src + _QS + 16 * j + i])
                    shift = 2 * (i // 2) + 16 * (i % 2)
                    u_a = ((byte >> 3) + 16) & 31  # q + 16 from the 5-bit two's complement field
                    u_b = ((((byte & 7) << 2) | np.int32((low2 >> np.uint32(shift)) & np.uint32(3))) + 16) & 31
                    qh |= np.uint32(u_a >> 4) << np.uint32(i)
                    qh |= np.uint32(u_b >> 4) << np.uint32(16 + i)
                    dst[r, o + 6 + i] = np.uint8((u_a & 15) | ((u_b & 15) << 4))
                for t in range(4):
                    dst[r, o + 2 + t] = np.uint8((qh >> np.uint32(8 * t)) & np.uint32(255))


def unpack_q5_0(packed: np.ndarray, n_rows: int) -> np.ndarray:
    """The inverse of `pack_q5_0`: the GGUF Q5_0 bytes of the first n_rows rows (tests check the round trip)."""
    dst = np.empty((n_rows, packed.shape[1] // 4), dtype=np.uint8)
    _unpack_rows(packed, dst)
    return dst


def _dot_quad_q5_0_packed(typingctx, w, t, xq, xd):
    """Rows 4t..4t+3 of packed Q5_0 (uint8 [n_quads, 4 * row_bytes]) against int16 activations xq with
    scales xd per 32: 4 float32 sums of d_b * xd_b * (q . xq)_b over blocks b, each row's blocks added in
    the order of `int8dot.dot4_q5_0`; the four rows' independent chains run in one loop."""
    if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array) and xq.dtype == types.int16):
        return None
    sig = types.UniTuple(types.float32, 4)(w, t, xq, xd)

    def codegen(context, builder, signature, args):
        wa = context.make_array(signature.args[0])(context, builder, args[0])
        xqa = context.make_array(signature.args[2])(context, builder, args[2])
        xda = context.make_array(signature.args[3])(context, builder, args[3])
        stride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
        intp = stride.type
        quad = context.cast(builder, args[1], signature.args[1], types.intp)
        base = builder.gep(wa.data, [builder.mul(quad, stride)])
        xq_ptr = builder.bitcast(xqa.data, _I16.as_pointer())
        n_groups = builder.udiv(cgutils.unpack_tuple(builder, xda.shape, 1)[0], ir.Constant(intp, GROUP_BLOCKS))
        fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
        v4f = ir.VectorType(_F32, 4)
        v16i8 = ir.VectorType(_I8, 16)
        lane_shifts = ir.Constant(_V8I32, [2 * k for k in range(8)])
        low2_mask = ir.Constant(_V8I32, [0x00030003] * 8)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(4)]
        with cgutils.for_range(builder, n_groups) as loop:
            g = loop.index
            b0 = builder.mul(g, ir.Constant(intp, GROUP_BLOCKS))
            xd4 = builder.load(builder.bitcast(builder.gep(xda.data, [b0]), v4f.as_pointer()), align=4)
            xs = [
                _x16_halves(builder, xq_ptr, builder.mul(builder.add(b0, ir.Constant(intp, j)), ir.Constant(intp, 32)))
                for j in range(GROUP_BLOCKS)
            ]
            for k in range(4):
                grp = builder.gep(
                    base,
                    [
                        builder.mul(
                            builder.add(builder.mul(g, ir.Constant(intp, 4)), ir.Constant(intp, k)),
                            ir.Constant(intp, GROUP_BYTES),
                        )
                    ],
                )
                for off in range(0, GROUP_BYTES, 64):
                    prefetch_ahead(builder, builder.gep(grp, [ir.Constant(intp, off)]))
                d4 = builder.fpext(_load(builder, grp, 0, ir.VectorType(ir.HalfType(), 4)), v4f)
                s4 = builder.fmul(d4, xd4)  # d_b * xd_b of the 4 blocks, rounded as dot4_q5_0 rounds it
                a = builder.load(accs[k])
                for j in range(GROUP_BLOCKS):
                    wb = builder.sext(_load(builder, grp, ir.Constant(_I32, _QS + 16 * j), v16i8), _V16I16)
                    q_lo = builder.ashr(wb, ir.Constant(_V16I16, [3] * 16))
                    top3 = builder.ashr(
                        builder.shl(wb, ir.Constant(_V16I16, [13] * 16)), ir.Constant(_V16I16, [11] * 16)
                    )
                    word = _load(builder, grp, ir.Constant(_I32, _QH + 4 * j), _I32)
                    words = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), word, ir.Constant(_I32, 0))
                    words = builder.shuffle_vector(words, words, ir.Constant(_V8I32, [0] * 8))
                    low2 = builder.and_(builder.lshr(words, lane_shifts), low2_mask)
                    q_hi = builder.or_(top3, builder.bitcast(low2, _V16I16))
                    xlo, xhi = xs[j]
                    idot = builder.add(_pairs_i32x8(builder, q_lo, xlo), _pairs_i32x8(builder, q_hi, xhi))
                    sv = builder.shuffle_vector(s4, s4, ir.Constant(_V8I32, [j] * 8))
                    a = builder.call(fmuladd, [builder.sitofp(idot, _V8F32), sv, a])
                builder.store(a, accs[k])
        outs = [_hsum(builder, builder.load(acc)) for acc in accs]
        return context.make_tuple(builder, signature.return_type, outs)

    return sig, codegen


dot_quad_q5_0_packed = intrinsic(_dot_quad_q5_0_packed)
CHUNK_ROWS = 64  # 76 chunks for 4864 rows: the two threads get equal shares


@njit(cache=True, fastmath=FAST)
def rows_q5_0_packed(w, xq, xd, xsum, y, r0, r1):
    """Rows [r0, r1) (r0 a multiple of 4) of packed Q5_0 against int16 activations (xsum unused: Q5_0 has no
    min term; the argument keeps the signature of the other integer decode kernels)."""
    for r in range(r0, r1, 4):
        a0, a1, a2, a3 = dot_quad_q5_0_packed(w, r // 4, xq, xd)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q5_0_packed(w, xq, xd, xsum, y):
    """Packed Q5_0 rows against int16 activations, chunks of CHUNK_ROWS rows in parallel."""
    n = y.shape[0]
    for c in prange((n + CHUNK_ROWS - 1) // CHUNK_ROWS):
        rows_q5_0_packed(w, xq, xd, xsum, y, c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS))
