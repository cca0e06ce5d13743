"""Integer block dot products for the decode matvec with int16 activations, emitted as LLVM vector IR.

Each intrinsic computes whole rows (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1: 4 rows a call, Q4_K/Q6_K: one row) against
activations quantized to int16 blocks of 32 (`matvec_int8.quantize_activations16`; the intrinsics also type
int8 activation blocks, which the engine no longer produces: llama.cpp's rounding is `ggml_exact`'s).
Numba's own integer arithmetic widens to 64 bits and defeats the SIMD instruction patterns, so the loops are
written in IR.
On AVX2 a 32-element block dot is vpmaddubsw/vpmaddwd, as in llama.cpp's ggml_vec_dot_*_q8_0; elsewhere
a portable widening multiply (same results).

Numba caches the kernels that call these (matvec_int8.py) keyed on *that* file's timestamp only: after
editing this module, touch matvec_int8.py (and q5_0_packed.py, q4_1_packed.py, which use its helpers) or delete
the `*.nbi`/`*.nbc` files, or stale code keeps running.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.kernels.cpu.isa import HALF_BY_INTEGERS, HAS_AVX2, prefetch_ahead

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_V32I8 = ir.VectorType(_I8, 32)
_V32I32 = ir.VectorType(_I32, 32)

# Four rows at a time, float vector accumulators (llama.cpp's ggml_vec_dot_q8_0_q8_0 scheme).
# The four rows are read one after the other (interleaving four row streams measured 3-4x slower than
# address order on the 2-core dev VM); the activations (a few KB of int8) stay in L1.
# Each 32-element block's integer dot stays an 8-lane int32 vector, is converted to float and multiply-added
# into an 8-lane float accumulator with the block's scale d_w * d_x; one horizontal sum per row at the end.
# On AVX2 the integer dot is vpabsb/vpsignb/vpmaddubsw/vpmaddwd (weights as the sign source, so a weight of
# -128 stays exact); elsewhere a portable widening multiply.

_I16 = ir.IntType(16)
_F32 = ir.FloatType()
_V16I8 = ir.VectorType(_I8, 16)
_V16I16 = ir.VectorType(_I16, 16)
_V8I32 = ir.VectorType(_I32, 8)
_V8F32 = ir.VectorType(_F32, 8)
_V32I16 = ir.VectorType(_I16, 32)


def _intrinsic_fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _fma(builder, a, b, c):
    """a * b + c rounded once (llvm.fma.f32: never split into a multiply and an add)."""
    return builder.call(_intrinsic_fn(builder, "llvm.fma.f32", _F32, [_F32] * 3), [a, b, c])


def _dot_i32x8(builder, wq, xq):
    """8 int32 partial sums of the 32 products int8(wq) * int8(xq)."""
    if HAS_AVX2:
        absf = _intrinsic_fn(builder, "llvm.abs.v32i8", _V32I8, [_V32I8, ir.IntType(1)])
        sign = _intrinsic_fn(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8])
        maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
        maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
        u = builder.call(absf, [wq, ir.Constant(ir.IntType(1), 0)])
        s = builder.call(sign, [xq, wq])
        p16 = builder.call(maddubs, [u, s])
        return builder.call(maddwd, [p16, ir.Constant(_V16I16, [1] * 16)])
    prod = builder.mul(builder.sext(wq, _V32I32), builder.sext(xq, _V32I32))
    even = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 16), list(range(0, 32, 2))))
    odd = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 16), list(range(1, 32, 2))))
    s16 = builder.add(even, odd)
    lo = builder.shuffle_vector(s16, s16, ir.Constant(_V8I32, list(range(8))))
    hi = builder.shuffle_vector(s16, s16, ir.Constant(_V8I32, list(range(8, 16))))
    return builder.add(lo, hi)


def _load(builder, ptr, offset, ty):
    p = builder.gep(ptr, [offset]) if not (isinstance(offset, int) and offset == 0) else ptr
    return builder.load(builder.bitcast(p, ty.as_pointer()), align=1)


def _f16(builder, ptr, offset):
    """The f16 at ptr+offset as a float (exact; by integers where `isa.HALF_BY_INTEGERS`)."""
    bits = _load(builder, ptr, ir.Constant(_I32, offset), _I16)
    if not HALF_BY_INTEGERS:
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), _F32)
    return _f16_by_integers(builder, bits)


def _f16_by_integers(builder, bits):
    """f16 bits (i16) -> the float of that value, exactly, without a half-precision instruction: shifted to the
    top of a word and arithmetically back by 3, the sign stays bit 31 and the exponent and mantissa land on
    float32's low exponent and high mantissa bits, which reads as the value times 2^-112 (zeros and subnormals
    too), so one multiply by 2^112 (exact) gives it; inf and NaN (exponent 31) get float32's all-ones exponent."""
    c = lambda v: ir.Constant(_I32, v)  # noqa: E731
    top = builder.shl(builder.zext(bits, _I32), c(16))
    moved = builder.and_(builder.ashr(top, c(3)), c(0x8FFFE000 - (1 << 32)))
    finite = builder.fmul(builder.bitcast(moved, _F32), ir.Constant(_F32, 2.0**112))
    special = builder.bitcast(builder.or_(moved, c(0x7F800000)), _F32)
    is_special = builder.icmp_unsigned("==", builder.and_(moved, c(0x0F800000)), c(0x0F800000))
    return builder.select(is_special, special, finite)


def _nibbles32(builder, ptr, offset):
    """The 16 bytes at ptr+offset as 32 values: low nibbles (elements 0-15), then high nibbles (16-31)."""
    qs = _load(builder, ptr, ir.Constant(_I32, offset), _V16I8)
    lo = builder.and_(qs, ir.Constant(_V16I8, [15] * 16))
    hi = builder.lshr(qs, ir.Constant(_V16I8, [4] * 16))
    return builder.shuffle_vector(lo, hi, ir.Constant(_V32I32, list(range(32))))


# Decoders return (32 weights as i8 lanes, scale d, min m or None). Q8_0/Q4_0/Q5_0 give signed weights (their
# offsets subtracted); Q4_1/Q5_1 give their unsigned codes u (0..15 / 0..31) and a min term m * xsum[b], so
# u . x is vpmaddubsw's unsigned-times-signed product directly, without the sign trick.
# (Folding Q4_0/Q5_0's offsets into a min term the same way measured no faster: the scalar min chain costs
# what the sign trick saves.)


def _decode_q8_0(builder, blk):
    """(32 signed weights, scale d, no min) of a Q8_0 block."""
    return _load(builder, blk, ir.Constant(_I32, 2), _V32I8), _f16(builder, blk, 0), None


def _decode_q4_0(builder, blk):
    q = builder.sub(_nibbles32(builder, blk, 2), ir.Constant(_V32I8, [8] * 32))
    return q, _f16(builder, blk, 0), None


def _decode_q4_1(builder, blk):
    return _nibbles32(builder, blk, 4), _f16(builder, blk, 0), _f16(builder, blk, 2)


def _high_bits(builder, blk, offset):
    """The 32 bits of the little-endian word at blk+offset as 32 bytes of 0 or 16 (Q5's fifth bit)."""
    word = _load(builder, blk, ir.Constant(_I32, offset), _I32)
    bits = builder.bitcast(word, ir.VectorType(ir.IntType(1), 32))
    return builder.shl(builder.zext(bits, _V32I8), ir.Constant(_V32I8, [4] * 32))


def _decode_q5_0(builder, blk):
    q = builder.or_(_nibbles32(builder, blk, 6), _high_bits(builder, blk, 2))
    return builder.sub(q, ir.Constant(_V32I8, [16] * 32)), _f16(builder, blk, 0), None


def _decode_q5_1(builder, blk):
    u = builder.or_(_nibbles32(builder, blk, 8), _high_bits(builder, blk, 4))
    return u, _f16(builder, blk, 0), _f16(builder, blk, 2)


def _dot_u8_i32x8(builder, u, xq):
    """8 int32 partial sums of the 32 products of unsigned weights u (< 128) and int8 activations xq."""
    if not HAS_AVX2:
        return _dot_i32x8(builder, u, xq)  # u < 128 reads the same as a signed byte
    maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
    maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
    return builder.call(maddwd, [builder.call(maddubs, [u, xq]), ir.Constant(_V16I16, [1] * 16)])


# Int16 activations (matvec_int8.quantize_activations16: 15-bit scale per 32 elements, ~256x finer than
# int8): the weights are widened to 16 bits and multiplied pairwise with vpmaddwd; sums stay exact in int32
# (at most 2 * 32 * 127 * 32767 per lane, or 2 * 32 * 32767 * 127 with Q6_K's scales).
_V16I32 = ir.VectorType(_I32, 16)


def _x16_halves(builder, xq_ptr, elem_offset):
    """The 32 int16 activations at xq_ptr + elem_offset as two <16 x i16> halves."""
    lo = _load(builder, xq_ptr, elem_offset, _V16I16)
    hi = _load(builder, xq_ptr, builder.add(elem_offset, ir.Constant(elem_offset.type, 16)), _V16I16)
    return lo, hi


def _pairs_i32x8(builder, a, b):
    """<16 x i16> a, b -> <8 x i32> with lane j = a[2j] b[2j] + a[2j+1] b[2j+1] (vpmaddwd)."""
    if HAS_AVX2:
        maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
        return builder.call(maddwd, [a, b])
    prod = builder.mul(builder.sext(a, _V16I32), builder.sext(b, _V16I32))
    even = builder.shuffle_vector(prod, prod, ir.Constant(_V8I32, list(range(0, 16, 2))))
    odd = builder.shuffle_vector(prod, prod, ir.Constant(_V8I32, list(range(1, 16, 2))))
    return builder.add(even, odd)


def _widen16(builder, q, signed):
    """32 weights q (i8 lanes, signed or unsigned codes) as two <16 x i16> halves (elements 0-15, 16-31)."""
    ext = builder.sext if signed else builder.zext
    qlo = ext(builder.shuffle_vector(q, q, ir.Constant(_V16I32, list(range(16)))), _V16I16)
    qhi = ext(builder.shuffle_vector(q, q, ir.Constant(_V16I32, list(range(16, 32)))), _V16I16)
    return qlo, qhi


def _dot16_halves(builder, q, xlo, xhi, signed):
    """(<8 x i32> of elements 0-15, <8 x i32> of 16-31) of 32 weights q times int16 activations."""
    qlo, qhi = _widen16(builder, q, signed)
    return _pairs_i32x8(builder, qlo, xlo), _pairs_i32x8(builder, qhi, xhi)


def _dot16_i32x8(builder, q, xlo, xhi, signed):
    """8 int32 partial sums of 32 weights times 32 int16 activations."""
    lo, hi = _dot16_halves(builder, q, xlo, xhi, signed)
    return builder.add(lo, hi)


def _is_x16(sig_arg) -> bool:
    return isinstance(sig_arg, types.Array) and sig_arg.dtype == types.int16


def _hsum(builder, vec):
    """Sum of 8 float lanes as a tree of 3 vector adds (reduce.fadd without reassoc adds them one by one)."""
    v4 = ir.VectorType(_F32, 4)
    lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 4), [0, 1, 2, 3]))
    hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 4), [4, 5, 6, 7]))
    s4 = builder.fadd(lo, hi)
    s2 = builder.fadd(
        s4, builder.shuffle_vector(s4, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(_I32, 4), [2, 3, 2, 3]))
    )
    s1 = builder.fadd(
        s2, builder.shuffle_vector(s2, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(_I32, 4), [1, 1, 1, 1]))
    )
    return builder.extract_element(s1, ir.Constant(_I32, 0))


def _make_dot4(name, block_bytes, decode):
    """An intrinsic dot4(w, r0, r1, r2, r3, xq, xd, xsum) -> 4 float32: rows r0..r3 of w (uint8 2-D, C order,
    blocks of `block_bytes` for 32 elements) against int8 activations xq with scales xd[b]; a block's min
    term (Q4_1/Q5_1) is m_b * xsum[b]."""

    def dot4(typingctx, w, r0, r1, r2, r3, xq, xd, xsum):
        if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array)):
            return None
        sig = types.UniTuple(types.float32, 4)(w, r0, r1, r2, r3, xq, xd, xsum)

        def codegen(context, builder, signature, args):
            wa = context.make_array(signature.args[0])(context, builder, args[0])
            xqa = context.make_array(signature.args[5])(context, builder, args[5])
            xda = context.make_array(signature.args[6])(context, builder, args[6])
            xsa = context.make_array(signature.args[7])(context, builder, args[7])
            stride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
            intp = stride.type
            rows = []
            for k in range(4):
                r = context.cast(builder, args[1 + k], signature.args[1 + k], types.intp)
                rows.append(builder.gep(wa.data, [builder.mul(r, stride)]))
            x16 = _is_x16(signature.args[5])
            xq_ptr = builder.bitcast(xqa.data, (_I16 if x16 else _I8).as_pointer())
            nb = cgutils.unpack_tuple(builder, xda.shape, 1)[0]
            # One accumulator per row, rows one after the other, blocks in address order: with int8 activations
            # the float operations of llama.cpp's ggml_vec_dot_*_q8_0 (AVX2). Reading two rows side by side
            # streamed 3-4x slower from DRAM on the 2-core dev VM; two accumulators per row measured no faster.
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(4)]
            mins = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(4)]
            fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
            for k in range(4):
                with cgutils.for_range(builder, nb) as loop:
                    b = loop.index
                    scale = builder.load(builder.gep(xda.data, [b]))
                    blk = builder.gep(rows[k], [builder.mul(b, ir.Constant(intp, block_bytes))])
                    prefetch_ahead(builder, blk)
                    q, d, m = decode(builder, blk)
                    if x16:
                        xlo, xhi = _x16_halves(builder, xq_ptr, builder.mul(b, ir.Constant(intp, 32)))
                        idot = _dot16_i32x8(builder, q, xlo, xhi, signed=m is None)
                    else:
                        xv = _load(builder, xq_ptr, builder.mul(b, ir.Constant(intp, 32)), _V32I8)
                        idot = _dot_i32x8(builder, q, xv) if m is None else _dot_u8_i32x8(builder, q, xv)
                    dot = builder.sitofp(idot, _V8F32)
                    sv = builder.insert_element(
                        ir.Constant(_V8F32, ir.Undefined), builder.fmul(d, scale), ir.Constant(_I32, 0)
                    )
                    sv = builder.shuffle_vector(sv, sv, ir.Constant(_V8I32, [0] * 8))
                    builder.store(builder.call(fmuladd, [dot, sv, builder.load(accs[k])]), accs[k])
                    if m is not None:
                        xs = builder.load(builder.gep(xsa.data, [b]))
                        builder.store(builder.fadd(builder.load(mins[k]), builder.fmul(m, xs)), mins[k])
            outs = []
            for k in range(4):
                v = _hsum(builder, builder.load(accs[k]))
                if decode in (_decode_q4_1, _decode_q5_1):
                    v = builder.fadd(v, builder.load(mins[k]))
                outs.append(v)
            return context.make_tuple(builder, signature.return_type, outs)

        return sig, codegen

    dot4.__name__ = dot4.__qualname__ = name
    return intrinsic(dot4)


dot4_q8_0 = _make_dot4("dot4_q8_0", 34, _decode_q8_0)
dot4_q4_0 = _make_dot4("dot4_q4_0", 18, _decode_q4_0)
dot4_q4_1 = _make_dot4("dot4_q4_1", 20, _decode_q4_1)
dot4_q5_0 = _make_dot4("dot4_q5_0", 22, _decode_q5_0)
dot4_q5_1 = _make_dot4("dot4_q5_1", 24, _decode_q5_1)


def _dot_scaled_i32x8(builder, q, xq, sc):
    """8 int32 partial sums of q[i] * xq[i] * sc[i // 16] (sc: <2 x i16>, the scales of the two halves)."""
    if HAS_AVX2:
        absf = _intrinsic_fn(builder, "llvm.abs.v32i8", _V32I8, [_V32I8, ir.IntType(1)])
        sign = _intrinsic_fn(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8])
        maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
        maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
        p16 = builder.call(
            maddubs, [builder.call(absf, [q, ir.Constant(ir.IntType(1), 0)]), builder.call(sign, [xq, q])]
        )
        scv = builder.shuffle_vector(sc, sc, ir.Constant(ir.VectorType(_I32, 16), [0] * 8 + [1] * 8))
        return builder.call(maddwd, [p16, scv])  # i16 lane j holds elements 2j, 2j+1
    prod = builder.mul(builder.sext(q, _V32I32), builder.sext(xq, _V32I32))
    sc32 = builder.sext(sc, ir.VectorType(_I32, 2))
    prod = builder.mul(prod, builder.shuffle_vector(sc32, sc32, ir.Constant(_V32I32, [0] * 16 + [1] * 16)))
    parts = [builder.shuffle_vector(prod, prod, ir.Constant(_V8I32, list(range(8 * i, 8 * i + 8)))) for i in range(4)]
    return builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3]))


def _superblock_row(context, builder, signature, args):
    """The common start of the K-quant row dots `(w, r, xq, xd, ...)`: (pointer to row r of w, pointer to the
    activations, whether they are int16, xd's array, super-blocks of 256 per row, the index type)."""
    wa = context.make_array(signature.args[0])(context, builder, args[0])
    xqa = context.make_array(signature.args[2])(context, builder, args[2])
    xda = context.make_array(signature.args[3])(context, builder, args[3])
    stride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
    intp = stride.type
    row = builder.gep(wa.data, [builder.mul(context.cast(builder, args[1], signature.args[1], types.intp), stride)])
    x16 = _is_x16(signature.args[2])
    xq_ptr = builder.bitcast(xqa.data, (_I16 if x16 else _I8).as_pointer())
    nb = builder.udiv(cgutils.unpack_tuple(builder, xda.shape, 1)[0], ir.Constant(intp, 8))
    return row, xq_ptr, x16, xda, nb, intp


def _q6_k_typer(vector_x16: bool):
    def _dot_row_q6_k(typingctx, w, r, xq, xd):
        """Row r of Q6_K bytes w (uint8 2-D, C order) against int8 or int16 activations xq with scales xd
        per 32: sum over super-blocks b and 32-element groups g of d_b * xd[8 b + g] * sum_i sc[i // 16] q_i xq_i
        (ggml_vec_dot_q6_K_q8_K, with our per-32 activation scales)."""
        if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array)):
            return None
        return types.float32(w, r, xq, xd), lambda *a: _q6_k_codegen(*a, vector_x16=vector_x16)

    name = "dot_row_q6_k" if vector_x16 else "dot_row_q6_k_scalar_scales"
    _dot_row_q6_k.__name__ = _dot_row_q6_k.__qualname__ = name
    return _dot_row_q6_k


def _q6_k_quants(builder, blk, qh, h, k):
    """The 32 signed quants (q - 32) of group 4h + k of the Q6_K super-block at `blk`: low nibbles from
    ql, two high bits from `qh` (the half's 32 high-bit bytes)."""
    ql = _load(builder, blk, ir.Constant(_I32, 64 * h + 32 * (k & 1)), _V32I8)
    nib = builder.lshr(ql, ir.Constant(_V32I8, [4] * 32)) if k >= 2 else ql
    nib = builder.and_(nib, ir.Constant(_V32I8, [15] * 32))
    hb = builder.and_(builder.lshr(qh, ir.Constant(_V32I8, [2 * k] * 32)), ir.Constant(_V32I8, [3] * 32))
    return builder.sub(builder.or_(nib, builder.shl(hb, ir.Constant(_V32I8, [4] * 32))), ir.Constant(_V32I8, [32] * 32))


def _q6_k_row_x16(builder, row, xq_ptr, xda, nb, intp):
    """`dot_row_q6_k` on int16 activations: the same float operations in the same order, with the 16
    scales of a super-block sign-extended once and d * xd of its 8 groups in one vector multiply."""
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(2)]
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.gep(row, [builder.mul(b, ir.Constant(intp, 210))])
        for off in range(0, 210, 64):
            prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
        g0 = builder.mul(b, ir.Constant(intp, 8))
        xd8 = builder.load(builder.bitcast(builder.gep(xda.data, [g0]), _V8F32.as_pointer()), align=4)
        dv = builder.insert_element(ir.Constant(_V8F32, ir.Undefined), _f16(builder, blk, 208), ir.Constant(_I32, 0))
        gscale = builder.fmul(builder.shuffle_vector(dv, dv, ir.Constant(_V8I32, [0] * 8)), xd8)  # d * xd_g
        sc16 = builder.sext(_load(builder, blk, ir.Constant(_I32, 192), _V16I8), _V16I16)
        for h in range(2):
            qh = _load(builder, blk, ir.Constant(_I32, 128 + 32 * h), _V32I8)
            for k in range(4):
                q = _q6_k_quants(builder, blk, qh, h, k)
                g = builder.add(g0, ir.Constant(intp, 4 * h + k))
                xlo, xhi = _x16_halves(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)))
                qlo, qhi = _widen16(builder, q, signed=True)
                i = 8 * h + 2 * k
                s0 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i] * 16))
                s1 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i + 1] * 16))
                idot = builder.add(
                    _pairs_i32x8(builder, builder.mul(qlo, s0), xlo),
                    _pairs_i32x8(builder, builder.mul(qhi, s1), xhi),
                )
                sv = builder.shuffle_vector(gscale, gscale, ir.Constant(_V8I32, [4 * h + k] * 8))
                acc = accs[k & 1]
                builder.store(builder.call(fmuladd, [builder.sitofp(idot, _V8F32), sv, builder.load(acc)]), acc)
    return _hsum(builder, builder.fadd(builder.load(accs[0]), builder.load(accs[1])))


def _q6_k_codegen(context, builder, signature, args, vector_x16):
    """Code of the Q6_K row dot; `vector_x16`: the vector scale handling for int16 activations."""
    row, xq_ptr, x16, xda, nb, intp = _superblock_row(context, builder, signature, args)
    if x16 and vector_x16:
        return _q6_k_row_x16(builder, row, xq_ptr, xda, nb, intp)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(2)]
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.gep(row, [builder.mul(b, ir.Constant(intp, 210))])
        d = _f16(builder, blk, 208)
        for h in range(2):
            qh = _load(builder, blk, ir.Constant(_I32, 128 + 32 * h), _V32I8)
            for k in range(4):
                q = _q6_k_quants(builder, blk, qh, h, k)
                sc = builder.sext(
                    _load(builder, blk, ir.Constant(_I32, 192 + 8 * h + 2 * k), ir.VectorType(_I8, 2)),
                    ir.VectorType(_I16, 2),
                )
                g = builder.add(builder.mul(b, ir.Constant(intp, 8)), ir.Constant(intp, 4 * h + k))
                if x16:
                    xlo, xhi = _x16_halves(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)))
                    # weights times their 16-element group's scale in 16 bits (|q sc| <= 32 * 128), then
                    # vpmaddwd with the activations: cheaper than scaling the int32 sums (vpmulld)
                    qlo, qhi = _widen16(builder, q, signed=True)
                    s0 = builder.shuffle_vector(sc, sc, ir.Constant(_V16I32, [0] * 16))
                    s1 = builder.shuffle_vector(sc, sc, ir.Constant(_V16I32, [1] * 16))
                    idot = builder.add(
                        _pairs_i32x8(builder, builder.mul(qlo, s0), xlo),
                        _pairs_i32x8(builder, builder.mul(qhi, s1), xhi),
                    )
                else:
                    xv = _load(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)), _V32I8)
                    idot = _dot_scaled_i32x8(builder, q, xv, sc)
                dot = builder.sitofp(idot, _V8F32)
                s = builder.fmul(d, builder.load(builder.gep(xda.data, [g])))
                sv = builder.insert_element(ir.Constant(_V8F32, ir.Undefined), s, ir.Constant(_I32, 0))
                sv = builder.shuffle_vector(sv, sv, ir.Constant(_V8I32, [0] * 8))
                acc = accs[k & 1]
                builder.store(builder.call(fmuladd, [dot, sv, builder.load(acc)]), acc)
    return _hsum(builder, builder.fadd(builder.load(accs[0]), builder.load(accs[1])))


dot_row_q6_k = intrinsic(_q6_k_typer(vector_x16=True))
# The same row dot with the scalar scale handling on int16 activations too (what ran before; tests check
# the two give the same float32 bits).
dot_row_q6_k_scalar_scales = intrinsic(_q6_k_typer(vector_x16=False))


def _scale_min_k4(builder, blk):
    """The 8 (scale, min) pairs of a Q4_K/Q5_K super-block as float32 values (ggml's get_scale_min_k4)."""
    byte = [builder.zext(_load(builder, blk, ir.Constant(_I32, 4 + i), _I8), _I32) for i in range(12)]

    def c(v):
        return ir.Constant(_I32, v)

    out = []
    for s in range(8):
        if s < 4:
            sc = builder.and_(byte[s], c(63))
            m = builder.and_(byte[s + 4], c(63))
        else:
            sc = builder.or_(builder.and_(byte[s + 4], c(15)), builder.shl(builder.lshr(byte[s - 4], c(6)), c(4)))
            m = builder.or_(builder.lshr(byte[s + 4], c(4)), builder.shl(builder.lshr(byte[s], c(6)), c(4)))
        out.append((builder.uitofp(sc, _F32), builder.uitofp(m, _F32)))
    return out


def _q4_k_typer(vector_x16: bool):
    def _dot_row_q4_k(typingctx, w, r, xq, xd, xsum):
        """Row r of Q4_K bytes w (uint8 2-D, C order) against int8 or int16 activations
        (ggml_vec_dot_q4_K_q8_K): sum over sub-blocks s of d sc_s xd_s (q . xq)_s - dmin m_s xsum_s."""
        if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array)):
            return None
        return types.float32(w, r, xq, xd, xsum), lambda *a: _q4_k_codegen(*a, vector_x16=vector_x16)

    name = "dot_row_q4_k" if vector_x16 else "dot_row_q4_k_scalar_scales"
    _dot_row_q4_k.__name__ = _dot_row_q4_k.__qualname__ = name
    return _dot_row_q4_k


def _q4_k_codegen(context, builder, signature, args, vector_x16):
    """Code of the Q4_K row dot; `vector_x16`: the vector scale unpacking for int16 activations."""
    row, xq_ptr, x16, xda, nb, intp = _superblock_row(context, builder, signature, args)
    xsa = context.make_array(signature.args[4])(context, builder, args[4])
    if x16 and vector_x16:
        return _q4_k_row_x16(builder, row, xq_ptr, xda, xsa, nb, intp)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(2)]
    mins = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
    ones = ir.Constant(_V16I16, [1] * 16)
    maddwd = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
    maddubs = _intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.gep(row, [builder.mul(b, ir.Constant(intp, 144))])
        d = _f16(builder, blk, 0)
        dmin = _f16(builder, blk, 2)
        scm = _scale_min_k4(builder, blk)
        msum = ir.Constant(_F32, 0.0)
        for j in range(4):
            qs = _load(builder, blk, ir.Constant(_I32, 16 + 32 * j), _V32I8)
            for half in range(2):
                s = 2 * j + half
                nib = builder.lshr(qs, ir.Constant(_V32I8, [4] * 32)) if half else qs
                nib = builder.and_(nib, ir.Constant(_V32I8, [15] * 32))
                g = builder.add(builder.mul(b, ir.Constant(intp, 8)), ir.Constant(intp, s))
                if x16:
                    xlo, xhi = _x16_halves(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)))
                    dot = _dot16_i32x8(builder, nib, xlo, xhi, signed=False)
                elif HAS_AVX2:  # nibbles are unsigned: no sign trick needed
                    xv = _load(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)), _V32I8)
                    dot = builder.call(maddwd, [builder.call(maddubs, [nib, xv]), ones])
                else:
                    xv = _load(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)), _V32I8)
                    dot = _dot_i32x8(builder, nib, xv)
                sc, m = scm[s]
                scale = builder.fmul(builder.fmul(d, sc), builder.load(builder.gep(xda.data, [g])))
                sv = builder.insert_element(ir.Constant(_V8F32, ir.Undefined), scale, ir.Constant(_I32, 0))
                sv = builder.shuffle_vector(sv, sv, ir.Constant(_V8I32, [0] * 8))
                acc = accs[half]
                builder.store(builder.call(fmuladd, [builder.sitofp(dot, _V8F32), sv, builder.load(acc)]), acc)
                msum = builder.fadd(msum, builder.fmul(m, builder.load(builder.gep(xsa.data, [g]))))
        builder.store(builder.fadd(builder.load(mins), builder.fmul(dmin, msum)), mins)
    total = _hsum(builder, builder.fadd(builder.load(accs[0]), builder.load(accs[1])))
    return builder.fsub(total, builder.load(mins))


dot_row_q4_k = intrinsic(_q4_k_typer(vector_x16=True))
# The same row dot with the scalar scale unpacking on int16 activations too (what ran before the vector
# version; tests check the two give the same float32 bits).
dot_row_q4_k_scalar_scales = intrinsic(_q4_k_typer(vector_x16=False))


def _scale_min_k4_vec(builder, blk):
    """The 8 (scale, min) pairs of a Q4_K super-block (ggml's get_scale_min_k4) as two <8 x float> vectors,
    unpacked in vector lanes (the same values as `_scale_min_k4`, which takes ~100 scalar instructions)."""
    bytes_ = builder.zext(_load(builder, blk, ir.Constant(_I32, 4), _V16I8), _V16I32)  # 12 scale bytes (+4)
    zero = ir.Constant(_V16I32, [0] * 16)

    def pick(idx):
        return builder.shuffle_vector(bytes_, zero, ir.Constant(_V8I32, idx))

    def c(values):
        return ir.Constant(_V8I32, values)

    a, b = pick([0, 1, 2, 3, 8, 9, 10, 11]), pick([4, 5, 6, 7, 8, 9, 10, 11])
    top_sc, top_m = pick([16] * 4 + [0, 1, 2, 3]), pick([16] * 4 + [4, 5, 6, 7])  # lanes 0-3 zero
    sc = builder.or_(builder.and_(a, c([63] * 4 + [15] * 4)), builder.shl(builder.lshr(top_sc, c([6] * 8)), c([4] * 8)))
    m = builder.and_(builder.lshr(b, c([0] * 4 + [4] * 4)), c([63] * 4 + [15] * 4))
    m = builder.or_(m, builder.shl(builder.lshr(top_m, c([6] * 8)), c([4] * 8)))
    return builder.sitofp(sc, _V8F32), builder.sitofp(m, _V8F32)


def _q4_k_row_x16(builder, row, xq_ptr, xda, xsa, nb, intp):
    """`dot_row_q4_k` on int16 activations: the same float operations in the same order, with the scales
    unpacked in vector lanes and each 16 bytes of nibbles zero-extended to 16-bit lanes before masking."""
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, [0.0] * 8)) for _ in range(2)]
    mins = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v8f32", _V8F32, [_V8F32] * 3)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.gep(row, [builder.mul(b, ir.Constant(intp, 144))])
        for off in range(0, 144, 64):
            prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
        d = _f16(builder, blk, 0)
        dmin = _f16(builder, blk, 2)
        sc, mv = _scale_min_k4_vec(builder, blk)
        g0 = builder.mul(b, ir.Constant(intp, 8))
        xd8 = builder.load(builder.bitcast(builder.gep(xda.data, [g0]), _V8F32.as_pointer()), align=4)
        dv = builder.insert_element(ir.Constant(_V8F32, ir.Undefined), d, ir.Constant(_I32, 0))
        dv = builder.shuffle_vector(dv, dv, ir.Constant(_V8I32, [0] * 8))
        # (d * sc_s) * xd_g, rounded as the scalar code: the fence keeps LLVM (the kernels compile with
        # reassociation allowed) from computing (d * xd_g) * sc_s instead, which rounds differently
        fence = _intrinsic_fn(builder, "llvm.arithmetic.fence.v8f32", _V8F32, [_V8F32])
        scales = builder.fmul(builder.call(fence, [builder.fmul(dv, sc)]), xd8)
        msum = ir.Constant(_F32, 0.0)
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
                xlo, xhi = _x16_halves(builder, xq_ptr, builder.mul(g, ir.Constant(intp, 32)))
                dot = builder.add(_pairs_i32x8(builder, q[0], xlo), _pairs_i32x8(builder, q[1], xhi))
                sv = builder.shuffle_vector(scales, scales, ir.Constant(_V8I32, [s] * 8))
                acc = accs[half]
                builder.store(builder.call(fmuladd, [builder.sitofp(dot, _V8F32), sv, builder.load(acc)]), acc)
                m = builder.extract_element(mv, ir.Constant(_I32, s))
                xs = builder.load(builder.gep(xsa.data, [g]))
                msum = builder.fmul(m, xs) if s == 0 else _fma(builder, m, xs, msum)  # as compiled from the scalar code
        builder.store(_fma(builder, dmin, msum, builder.load(mins)), mins)
    total = _hsum(builder, builder.fadd(builder.load(accs[0]), builder.load(accs[1])))
    return builder.fsub(total, builder.load(mins))
