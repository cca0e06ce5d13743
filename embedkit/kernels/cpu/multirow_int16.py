"""`y = x @ W.T` for a few activation rows (a continuous-batching decode step) with int16 activations: each weight
block is read and decoded once and multiplied with every activation row (registry path `cpu.int16`, several rows).

The arithmetic of each (weight row, activation row) pair is that of the single-row decode kernels
(`matvec_int8`, block dots in `int8dot`) operation for operation: the same integer block dot (exact), the same
float32 scale products, multiply-adds into the same 8-lane accumulators in the same order, the same horizontal
sum. A sequence's logits therefore do not depend on the batch it runs in: bit-identical to its solo decode
(tests/test_kernels_multirow_int16.py).

One intrinsic `dot_rows(w, r, xq, xd, xsum, y, i0, kind, group)` computes weight row r against the `group`
activation rows i0 .. i0 + group - 1 (clamped to the last row: a clamped row recomputes the last row's value and
stores the same bits) for the quant type `kind` (an index into KINDS); `int16_rows_kernel(<type>)` makes the
cached parallel kernel of a type over all rows. Activations: xq int16 [n_x, n], xd and xsum float32
[n_x, n // 32] (`matvec_int8.quantize_activations16` of each row).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.kernels.cpu.int8dot import (
    _F32,
    _I16,
    _I32,
    _V8F32,
    _V8I32,
    _V16I8,
    _V16I16,
    _V16I32,
    _decode_q4_0,
    _decode_q4_1,
    _decode_q5_0,
    _decode_q5_1,
    _decode_q8_0,
    _f16,
    _fma,
    _hsum,
    _intrinsic_fn,
    _load,
    _pairs_i32x8,
    _q6_k_quants,
    _scale_min_k4_vec,
    _widen16,
    _x16_halves,
)
from embedkit.kernels.cpu.isa import prefetch_ahead
from embedkit.kernels.cpu.matvec_int8 import quantize_activations16
from embedkit.kernels.cpu.matvec_legacy import FAST

# the `kernel_suffix` of each type, in the order of their `kind` index
KINDS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k")
_LEGACY = {
    "q8_0": (34, _decode_q8_0),
    "q4_0": (18, _decode_q4_0),
    "q4_1": (20, _decode_q4_1),
    "q5_0": (22, _decode_q5_0),
    "q5_1": (24, _decode_q5_1),
}
GROUPS = (2, 4, 8)  # activation rows per call (`dot_rows`'s `group`)
CHUNK_ROWS = 16  # weight rows per prange chunk


def _splat8(builder, v):
    sv = builder.insert_element(ir.Constant(_V8F32, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(sv, sv, ir.Constant(_V8I32, [0] * 8))


class _Row:
    """One activation row of a call: pointers to its xq (int16), xd and xsum, and its accumulators."""

    def __init__(self, builder, xq_ptr, xd_ptr, xs_ptr, n_acc, has_min):
        self.xq, self.xd, self.xs = xq_ptr, xd_ptr, xs_ptr
        self.accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(n_acc)]
        self.mins = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) if has_min else None


def _fmuladd_into(builder, acc, dot, sv):
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
    builder.store(builder.call(fmuladd, [builder.sitofp(dot, _V8F32), sv, builder.load(acc)]), acc)


def _legacy_block(builder, blk, b, rows, intp, decode):
    """One 32-element block against every row: `int8dot._make_dot4`'s int16 path."""
    prefetch_ahead(builder, blk)
    q, d, m = decode(builder, blk)
    qlo, qhi = _widen16(builder, q, signed=m is None)
    for row in rows:
        scale = builder.load(builder.gep(row.xd, [b]))
        xlo, xhi = _x16_halves(builder, row.xq, builder.mul(b, ir.Constant(intp, 32)))
        idot = builder.add(_pairs_i32x8(builder, qlo, xlo), _pairs_i32x8(builder, qhi, xhi))
        _fmuladd_into(builder, row.accs[0], idot, _splat8(builder, builder.fmul(d, scale)))
        if m is not None:
            xs = builder.load(builder.gep(row.xs, [b]))
            builder.store(builder.fadd(builder.load(row.mins), builder.fmul(m, xs)), row.mins)


def _legacy_finish(builder, row):
    v = _hsum(builder, builder.load(row.accs[0]))
    return v if row.mins is None else builder.fadd(v, builder.load(row.mins))


def _q4_k_block(builder, blk, b, rows, intp):
    """One super-block against every row: `int8dot._q4_k_row_x16`."""
    for off in range(0, 144, 64):
        prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
    d = _f16(builder, blk, 0)
    dmin = _f16(builder, blk, 2)
    sc, mv = _scale_min_k4_vec(builder, blk)
    g0 = builder.mul(b, ir.Constant(intp, 8))
    fence = _intrinsic_fn(builder, "llvm.arithmetic.fence.v8f32", _V8F32, [_V8F32])
    dsc = builder.call(fence, [builder.fmul(_splat8(builder, d), sc)])
    scales = []
    for row in rows:
        xd8 = builder.load(builder.bitcast(builder.gep(row.xd, [g0]), _V8F32.as_pointer()), align=4)
        scales.append(builder.fmul(dsc, xd8))
    msums = [None] * len(rows)
    for j in range(4):
        halves = [
            builder.zext(_load(builder, blk, ir.Constant(_I32, 16 + 32 * j + 16 * h), _V16I8), _V16I16)
            for h in range(2)
        ]
        for half in range(2):
            s = 2 * j + half
            if half:
                q = [builder.lshr(v, ir.Constant(_V16I16, [4] * 16)) for v in halves]
            else:
                q = [builder.and_(v, ir.Constant(_V16I16, [15] * 16)) for v in halves]
            g = builder.add(g0, ir.Constant(intp, s))
            m = builder.extract_element(mv, ir.Constant(_I32, s))
            for i, row in enumerate(rows):
                xlo, xhi = _x16_halves(builder, row.xq, builder.mul(g, ir.Constant(intp, 32)))
                dot = builder.add(_pairs_i32x8(builder, q[0], xlo), _pairs_i32x8(builder, q[1], xhi))
                sv = builder.shuffle_vector(scales[i], scales[i], ir.Constant(_V8I32, [s] * 8))
                _fmuladd_into(builder, row.accs[half], dot, sv)
                xs = builder.load(builder.gep(row.xs, [g]))
                msums[i] = builder.fmul(m, xs) if s == 0 else _fma(builder, m, xs, msums[i])
    for i, row in enumerate(rows):
        builder.store(_fma(builder, dmin, msums[i], builder.load(row.mins)), row.mins)


def _q4_k_finish(builder, row):
    total = _hsum(builder, builder.fadd(builder.load(row.accs[0]), builder.load(row.accs[1])))
    return builder.fsub(total, builder.load(row.mins))


def _q6_k_block(builder, blk, b, rows, intp):
    """One super-block against every row: `int8dot._q6_k_row_x16` (weights times their scales once)."""
    for off in range(0, 210, 64):
        prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
    g0 = builder.mul(b, ir.Constant(intp, 8))
    dv = _splat8(builder, _f16(builder, blk, 208))
    gscales = []
    for row in rows:
        xd8 = builder.load(builder.bitcast(builder.gep(row.xd, [g0]), _V8F32.as_pointer()), align=4)
        gscales.append(builder.fmul(dv, xd8))
    sc16 = builder.sext(_load(builder, blk, ir.Constant(_I32, 192), _V16I8), _V16I16)
    for h in range(2):
        qh = _load(builder, blk, ir.Constant(_I32, 128 + 32 * h), ir.VectorType(ir.IntType(8), 32))
        for k in range(4):
            q = _q6_k_quants(builder, blk, qh, h, k)
            g = builder.add(g0, ir.Constant(intp, 4 * h + k))
            qlo, qhi = _widen16(builder, q, signed=True)
            i = 8 * h + 2 * k
            s0 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i] * 16))
            s1 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i + 1] * 16))
            plo, phi = builder.mul(qlo, s0), builder.mul(qhi, s1)
            for r, row in enumerate(rows):
                xlo, xhi = _x16_halves(builder, row.xq, builder.mul(g, ir.Constant(intp, 32)))
                idot = builder.add(_pairs_i32x8(builder, plo, xlo), _pairs_i32x8(builder, phi, xhi))
                sv = builder.shuffle_vector(gscales[r], gscales[r], ir.Constant(_V8I32, [4 * h + k] * 8))
                _fmuladd_into(builder, row.accs[k & 1], idot, sv)


def _q6_k_finish(builder, row):
    return _hsum(builder, builder.fadd(builder.load(row.accs[0]), builder.load(row.accs[1])))


def _kind_code(suffix):
    """(block bytes, blocks per 32-element activation scale count divisor, accumulators, has a min term,
    block function, finish function) of a type."""
    if suffix == "q4_k":
        return 144, 8, 2, True, _q4_k_block, _q4_k_finish
    if suffix == "q6_k":
        return 210, 8, 2, False, _q6_k_block, _q6_k_finish
    block_bytes, decode = _LEGACY[suffix]

    def block(builder, blk, b, rows, intp):
        _legacy_block(builder, blk, b, rows, intp, decode)

    return block_bytes, 1, 1, decode in (_decode_q4_1, _decode_q5_1), block, _legacy_finish


def _row_ptr(context, builder, arr_ty, arr_val, i, elem):
    """Pointer (to `elem`) at row i of a 2-D C-order array."""
    a = context.make_array(arr_ty)(context, builder, arr_val)
    stride = cgutils.unpack_tuple(builder, a.strides, 2)[0]
    p = builder.gep(builder.bitcast(a.data, ir.IntType(8).as_pointer()), [builder.mul(i, stride)])
    return builder.bitcast(p, elem.as_pointer()), a


@intrinsic(prefer_literal=True)
def dot_rows(typingctx, w, r, xq, xd, xsum, y, i0, kind, group):
    """y[i, r] = W[r] . x[i] for the `group` activation rows i from i0 (clamped to the last), W of type
    KINDS[kind] (uint8 [n_rows, row_bytes]); `kind` and `group` compile-time integer literals."""
    if not (isinstance(kind, types.IntegerLiteral) and isinstance(group, types.IntegerLiteral)):
        return None
    suffix, n_group = KINDS[kind.literal_value], group.literal_value
    block_bytes, per_block, n_acc, has_min, block, finish = _kind_code(suffix)
    sig = types.void(w, r, xq, xd, xsum, y, i0, kind, group)

    def codegen(context, builder, signature, args):
        wa = context.make_array(signature.args[0])(context, builder, args[0])
        intp = cgutils.unpack_tuple(builder, wa.strides, 2)[0].type
        rr = context.cast(builder, args[1], signature.args[1], types.intp)
        wrow = builder.gep(wa.data, [builder.mul(rr, cgutils.unpack_tuple(builder, wa.strides, 2)[0])])
        first = context.cast(builder, args[6], signature.args[6], types.intp)
        xqa = context.make_array(signature.args[2])(context, builder, args[2])
        last = builder.sub(cgutils.unpack_tuple(builder, xqa.shape, 2)[0], ir.Constant(intp, 1))
        rows, idx = [], []
        for k in range(n_group):
            want = builder.add(first, ir.Constant(intp, k))
            i = builder.select(builder.icmp_signed("<", want, last), want, last)
            xq_ptr, _ = _row_ptr(context, builder, signature.args[2], args[2], i, _I16)
            xd_ptr, xda = _row_ptr(context, builder, signature.args[3], args[3], i, _F32)
            xs_ptr, _ = _row_ptr(context, builder, signature.args[4], args[4], i, _F32)
            rows.append(_Row(builder, xq_ptr, xd_ptr, xs_ptr, n_acc, has_min))
            idx.append(i)
        n_scales = cgutils.unpack_tuple(builder, xda.shape, 2)[1]
        nb = builder.udiv(n_scales, ir.Constant(intp, per_block)) if per_block > 1 else n_scales
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            blk = builder.gep(wrow, [builder.mul(b, ir.Constant(intp, block_bytes))])
            block(builder, blk, b, rows, intp)
        for row, i in zip(rows, idx, strict=True):
            y_ptr, _ = _row_ptr(context, builder, signature.args[5], args[5], i, _F32)
            builder.store(finish(builder, row), builder.gep(y_ptr, [rr]))
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _rows_all(w, xq, xd, xsum, y, r, kind):
    """Weight row r against every activation row, 8, 4 or 2 rows a call."""
    n_x = xq.shape[0]
    i0 = 0
    while i0 < n_x:
        left = n_x - i0
        if left > 4:
            dot_rows(w, r, xq, xd, xsum, y, i0, kind, 8)
            i0 += 8
        elif left > 2:
            dot_rows(w, r, xq, xd, xsum, y, i0, kind, 4)
            i0 += 4
        else:
            dot_rows(w, r, xq, xd, xsum, y, i0, kind, 2)
            i0 += 2


@functools.cache
def int16_rows_kernel(suffix: str) -> Callable[..., None]:
    """The parallel kernel `int16_rows_<suffix>(w, xq, xd, xsum, y)`: y [n_x, n_rows] = x @ W.T for W of the type
    with `kernel_suffix` `suffix` (uint8 [n_rows, row_bytes]) and x as int16 activations (xq int16 [n_x, n],
    xd, xsum float32 [n_x, n // 32]), chunks of CHUNK_ROWS weight rows in parallel. Compiled once, cached on
    disk (the kernel closes over the type's index, an int: see `matmul_multirow.multirow_kernel`)."""
    kind = KINDS.index(suffix)

    def kernel(w, xq, xd, xsum, y):
        n_rows = w.shape[0]
        for c in prange((n_rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
            for r in range(c * CHUNK_ROWS, min(n_rows, (c + 1) * CHUNK_ROWS)):
                _rows_all(w, xq, xd, xsum, y, r, kind)

    kernel.__name__ = kernel.__qualname__ = f"int16_rows_{suffix}"
    return njit(parallel=True, cache=True, fastmath=FAST)(kernel)


@functools.cache
def int16_rows_serial(suffix: str) -> Callable[..., None]:
    """`int16_rows_kernel` on the calling thread, for small weights (no parallel launch)."""
    kind = KINDS.index(suffix)

    def kernel(w, xq, xd, xsum, y):
        for r in range(w.shape[0]):
            _rows_all(w, xq, xd, xsum, y, r, kind)

    kernel.__name__ = kernel.__qualname__ = f"int16_rows_serial_{suffix}"
    return njit(cache=True, fastmath=FAST)(kernel)


@njit(cache=True)
def quantize_rows16(x, xq, xd, xsum):
    """Every row of x float32 [n_x, n] as int16 activations (`quantize_activations16`)."""
    for i in range(x.shape[0]):
        quantize_activations16(x[i], xq[i], xd[i], xsum[i])

