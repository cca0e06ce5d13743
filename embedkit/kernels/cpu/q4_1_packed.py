"""Q4_1 weights repacked once for the int16-activation decode matvec (SmolLM2's layers): same bytes per row.

The GGUF layout interleaves each block's f16 d and m with its 16 bytes of nibbles; `int8dot.dot4_q4_1` loads
and converts d and m one block at a time and unpacks the nibbles at byte width before widening them. The
packed layout groups 2 blocks (40 bytes) of a row: the 2 scales d, the 2 mins m (f16), then the 2 x 16 bytes
of nibbles unchanged, and, as `q5_0_packed`, puts the groups of 4 consecutive rows side by side (rows
4t..4t+3 in row t of the packed array) so four rows' float chains run in one loop over address-ordered bytes.
Each row's float operations are those of `dot4_q4_1` on int16 activations, in the same order (its min chain
as compiled there: one fused multiply-add per block), so results are bit-identical
(tests/test_kernels_q4_1_packed.py). Rows need an even number of blocks (a multiple of 64 columns).
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
    _fma,
    _hsum,
    _intrinsic_fn,
    _load,
    _pairs_i32x8,
    _x16_halves,
)
from embedkit.kernels.cpu.isa import prefetch_ahead
from embedkit.kernels.cpu.matvec_legacy import FAST, store4

BLOCK_BYTES = 20  # Q4_1: f16 d, f16 m, 16 bytes of nibbles
GROUP_BLOCKS = 2
GROUP_BYTES = GROUP_BLOCKS * BLOCK_BYTES
_M = 2 * GROUP_BLOCKS  # offset of the group's mins
_QS = 4 * GROUP_BLOCKS  # offset of its nibbles


def can_pack(n_cols: int) -> bool:
    """Whether rows of n_cols Q4_1 weights have the packed layout (whole groups of 2 blocks)."""
    return n_cols % (32 * GROUP_BLOCKS) == 0


@njit(cache=True, parallel=True)
def _pack_rows(src, dst):
    n_rows = src.shape[0]
    n_groups = src.shape[1] // GROUP_BYTES
    for quad in prange(dst.shape[0]):
        out = dst[quad]
        for r in range(4 * quad, min(n_rows, 4 * quad + 4)):
            for g in range(n_groups):
                o_dst = (4 * g + r % 4) * GROUP_BYTES
                for j in range(GROUP_BLOCKS):
                    o = g * GROUP_BYTES + j * BLOCK_BYTES
                    out[o_dst + 2 * j] = src[r, o]
                    out[o_dst + 2 * j + 1] = src[r, o + 1]
                    out[o_dst + _M + 2 * j] = src[r, o + 2]
                    out[o_dst + _M + 2 * j + 1] = src[r, o + 3]
                    for i in range(16):
                        out[o_dst + _QS + 16 * j + i] = src[r, o + 4 + i]


def pack_q4_1(rows: np.ndarray) -> np.ndarray:
    """Q4_1 rows (uint8 [n_rows, row_bytes], whole groups of 2 blocks) -> a new uint8 array
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
                dst[r, o + 2] = packed[o_src + _M + 2 * j]
                dst[r, o + 3] = packed[o_src + _M + 2 * j + 1]
                for i in range(16):
                    dst[r, o + 4 + i] = packed[o_src + _QS + 16 * j + i]


def unpack_q4_1(packed: np.ndarray, n_rows: int) -> np.ndarray:
    """The inverse of `pack_q4_1`: the GGUF Q4_1 bytes of the first n_rows rows (tests check the round trip)."""
    dst = np.empty((n_rows, packed.shape[1] // 4), dtype=np.uint8)
    _unpack_rows(packed, dst)
    return dst


def _dot_quad_q4_1_packed(typingctx, w, t, xq, xd, xsum):
    """Rows 4t..4t+3 of packed Q4_1 (uint8 [n_quads, 4 * row_bytes]) against int16 activations: per row,
    hsum over blocks of float(u . xq) * (d xd) accumulated in 8 lanes, plus the chain of m * xsum, as
    `int8dot.dot4_q4_1` computes them."""
    if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array) and xq.dtype == types.int16):
        return None
    sig = types.UniTuple(types.float32, 4)(w, t, xq, xd, xsum)

    def codegen(context, builder, signature, args):
        wa = context.make_array(signature.args[0])(context, builder, args[0])
        xqa = context.make_array(signature.args[2])(context, builder, args[2])
        xda = context.make_array(signature.args[3])(context, builder, args[3])
        xsa = context.make_array(signature.args[4])(context, builder, args[4])
        stride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
        intp = stride.type
        quad = context.cast(builder, args[1], signature.args[1], types.intp)
        base = builder.gep(wa.data, [builder.mul(quad, stride)])
        xq_ptr = builder.bitcast(xqa.data, _I16.as_pointer())
        n_groups = builder.udiv(cgutils.unpack_tuple(builder, xda.shape, 1)[0], ir.Constant(intp, GROUP_BLOCKS))
        fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
        v2f = ir.VectorType(_F32, GROUP_BLOCKS)
        v16i8 = ir.VectorType(_I8, 16)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(4)]
        mins = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(4)]
        with cgutils.for_range(builder, n_groups) as loop:
            g = loop.index
            b0 = builder.mul(g, ir.Constant(intp, GROUP_BLOCKS))
            xd2 = builder.load(builder.bitcast(builder.gep(xda.data, [b0]), v2f.as_pointer()), align=4)
            xs = [builder.load(builder.gep(xsa.data, [builder.add(b0, ir.Constant(intp, j))])) for j in range(2)]
            xh = [
                _x16_halves(builder, xq_ptr, builder.mul(builder.add(b0, ir.Constant(intp, j)), ir.Constant(intp, 32)))
                for j in range(GROUP_BLOCKS)
            ]
            for k in range(4):
                row_group = builder.add(builder.mul(g, ir.Constant(intp, 4)), ir.Constant(intp, k))
                grp = builder.gep(base, [builder.mul(row_group, ir.Constant(intp, GROUP_BYTES))])
                prefetch_ahead(builder, grp)
                dm = builder.fpext(_load(builder, grp, 0, ir.VectorType(ir.HalfType(), 4)), ir.VectorType(_F32, 4))
                d2 = builder.shuffle_vector(dm, dm, ir.Constant(ir.VectorType(_I32, 2), [0, 1]))
                m2 = builder.shuffle_vector(dm, dm, ir.Constant(ir.VectorType(_I32, 2), [2, 3]))
                s2 = builder.fmul(d2, xd2)  # d_b * xd_b, as dot4_q4_1 rounds it
                a = builder.load(accs[k])
                mn = builder.load(mins[k])
                for j in range(GROUP_BLOCKS):
                    wb = builder.zext(_load(builder, grp, ir.Constant(_I32, _QS + 16 * j), v16i8), _V16I16)
                    lo = builder.and_(wb, ir.Constant(_V16I16, [15] * 16))
                    hi = builder.lshr(wb, ir.Constant(_V16I16, [4] * 16))
                    xlo, xhi = xh[j]
                    idot = builder.add(_pairs_i32x8(builder, lo, xlo), _pairs_i32x8(builder, hi, xhi))
                    sv = builder.shuffle_vector(s2, s2, ir.Constant(_V8I32, [j] * 8))
                    a = builder.call(fmuladd, [builder.sitofp(idot, _V8F32), sv, a])
                    mn = _fma(builder, builder.extract_element(m2, ir.Constant(_I32, j)), xs[j], mn)
                builder.store(a, accs[k])
                builder.store(mn, mins[k])
        outs = [builder.fadd(_hsum(builder, builder.load(accs[k])), builder.load(mins[k])) for k in range(4)]
        return context.make_tuple(builder, signature.return_type, outs)

    return sig, codegen


dot_quad_q4_1_packed = intrinsic(_dot_quad_q4_1_packed)
# Rows per chunk of the parallel kernel (a multiple of 4). Numba hands each thread an equal share of the chunks:
# SmolLM2's 576-row attn_q/o and ffn_down split 9/9 over two threads with 32, 5/4 with 64.
CHUNK_ROWS = 32


@njit(cache=True, fastmath=FAST)
def rows_q4_1_packed(w, xq, xd, xsum, y, r0, r1):
    """Rows [r0, r1) (r0 a multiple of 4) of packed Q4_1 against int16 activations."""
    for r in range(r0, r1, 4):
        a0, a1, a2, a3 = dot_quad_q4_1_packed(w, r // 4, xq, xd, xsum)
        store4(y, r, a0, a1, a2, a3)


@njit(parallel=True, cache=True, fastmath=FAST)
def matvec_q4_1_packed(w, xq, xd, xsum, y):
    """Packed Q4_1 rows against int16 activations, chunks of CHUNK_ROWS rows in parallel."""
    n = y.shape[0]
    for c in prange((n + CHUNK_ROWS - 1) // CHUNK_ROWS):
        rows_q4_1_packed(w, xq, xd, xsum, y, c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS))
