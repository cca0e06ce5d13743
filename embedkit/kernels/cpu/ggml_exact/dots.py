"""Quantized matmuls whose float32 results equal llama.cpp's x86 AVX2 CPU kernels bit for bit.

`mul_mat_vec_dot(w, ggml_type, xq, n_cols)[t, r]` is ggml_vec_dot_<type>_q8_<..>(weight row r, activation
row t) for Q8_0, Q5_0 and Q4_0 (x Q8_0), Q4_1 (x Q8_1), Q4_K, Q5_K and Q6_K (x Q8_K); activations come from
`ggml_exact.quantize`. Each block's integer dot is the same 8 int32 lanes as ggml's (lane l sums elements
4l..4l+3 of a 32-byte group, with the group's scale where there is one), converted to float and fused-
multiply-added into 8 float lanes; the lanes are summed in hsum_float_8's order ((0+4)+(2+6))+((1+5)+(3+7)).
(Q5_K's mins term is a scalar: per block, summs = fma(-d_x * dmin_w, float(mins . bsums), summs), added last.)
`mul_mat_tiled` is ggml's tiled K-quant matmul (ggml-cpu/tiled), which MUL_MAT uses for Q4_K/Q5_K/Q6_K from 8
activation rows on (x86 does not repack Q5_K/Q6_K). `mul_mat_q` quantizes float32 activations and picks the
kernel ggml picks.

The kernels are LLVM vector IR (Numba does not vectorise these lane patterns itself): on AVX2 the integer
dot uses the very instructions ggml uses (vpsignb, vpmaddubsw, vpmaddwd), elsewhere portable IR with the
same integer results.

Batched Q8_0/Q5_0/Q4_0: for two or more activation rows ggml first offers the matmul to llamafile_sgemm, whose
tinyBLAS_Q0_AVX takes Q8_0 and Q5_0 (also Q4_0, IQ4_NL) weights. Its kernels (gemm<RM,RN>, gemm4xN,
gemmMx4) do per output exactly what vec_dot does: the same sign/maddubs/madd integer lanes, one
_mm256_fmadd_ps of d_w * d_x (the same float32 product) per block in block order from zero, and an 8-lane
horizontal sum in the same order. Only the tiling over outputs differs, so vec_dot's results are also
tinyBLAS's (tests/test_ggml_exact_quant.py checks both against the library; tests/test_ggml_exact_q4_0.py
for Q4_0).

Q4_0 weights with n_out % 8 == 0 are repacked by llama.cpp (q4_0_8x8_q8_0): `mul_mat_q4_0_repacked`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact.quantize import quantize_q8_0, quantize_q8_1, quantize_q8_K
from embedkit.quant import QUANT_TYPES, types_with
from embedkit.quant.registry import GGML_EXACT

# the ggml type ids as plain ints: the compiled kernels compare a type argument against them
Q4_0, Q4_1, Q5_0, Q8_0 = int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0), int(GGMLType.Q8_0)
Q4_K, Q5_K, Q6_K = int(GGMLType.Q4_K), int(GGMLType.Q5_K), int(GGMLType.Q6_K)

# weight type -> (elements per block, weight block bytes, activation block bytes), from the quant registry
_LAYOUT = {
    int(t): (QUANT_TYPES[t].block_size, QUANT_TYPES[t].type_size, QUANT_TYPES[t].activation_bytes)
    for t in types_with(GGML_EXACT)
}

_TILE = 4  # activation rows per call of a tile kernel: a weight block is decoded once for all of them

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_V4F32 = ir.VectorType(_F32, 4)
_V8F32 = ir.VectorType(_F32, 8)
_V4I32 = ir.VectorType(_I32, 4)
_V8I32 = ir.VectorType(_I32, 8)
_V16I32 = ir.VectorType(_I32, 16)
_V32I32 = ir.VectorType(_I32, 32)
_V8I16 = ir.VectorType(_I16, 8)
_V16I16 = ir.VectorType(_I16, 16)
_V16I8 = ir.VectorType(_I8, 16)
_V32I8 = ir.VectorType(_I8, 32)


def _host_has_avx2() -> bool:
    try:
        import llvmlite.binding as llvm

        return "+avx2" in llvm.get_host_cpu_features().flatten()
    except Exception:  # unknown: the portable IR is always correct
        return False


HAS_AVX2 = _host_has_avx2()


def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(vec_type, value):
    return ir.Constant(vec_type, [value] * vec_type.count)


def _shuffle(builder, v, idx):
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, len(idx)), list(idx)))


def _broadcast(builder, scalar, vec_type):
    v = builder.insert_element(ir.Constant(vec_type, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return _shuffle(builder, v, [0] * vec_type.count)


def _load(builder, ptr, offset, ty):
    p = builder.gep(ptr, [offset if isinstance(offset, ir.Value) else ir.Constant(_I32, offset)])
    return builder.load(builder.bitcast(p, ty.as_pointer()), align=1)


def _f16(builder, ptr, offset):
    return builder.fpext(builder.bitcast(_load(builder, ptr, offset, _I16), ir.HalfType()), _F32)


def _fma(builder, a, b, c):
    """a * b + c with one rounding per lane (_mm256_fmadd_ps / vfmadd231ss)."""
    t = a.type
    name = "llvm.fma.f32" if t == _F32 else f"llvm.fma.v{t.count}f32"
    return builder.call(_fn(builder, name, t, [t, t, t]), [a, b, c])


# --- the x86 integer instructions ggml uses, as intrinsics on AVX2 and as equivalent portable IR elsewhere ---


def _pairs_even_odd(builder, prod, n):
    even = _shuffle(builder, prod, range(0, 2 * n, 2))
    odd = _shuffle(builder, prod, range(1, 2 * n, 2))
    return builder.add(even, odd)


def _sign_epi8(builder, a, b):
    """vpsignb: a negated (wrapping) where b < 0, zero where b == 0."""
    if HAS_AVX2:
        return builder.call(_fn(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8]), [a, b])
    zero = _splat(_V32I8, 0)
    neg = builder.select(builder.icmp_signed("<", b, zero), builder.sub(zero, a), a)
    return builder.select(builder.icmp_signed("==", b, zero), zero, neg)


def _maddubs(builder, u, s):
    """vpmaddubsw: unsigned bytes u times signed bytes s, adjacent pairs summed with int16 saturation."""
    if HAS_AVX2:
        return builder.call(_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8]), [u, s])
    prod = builder.mul(builder.zext(u, _V32I32), builder.sext(s, _V32I32))
    pairs = _pairs_even_odd(builder, prod, 16)
    lo, hi = _splat(_V16I32, -32768), _splat(_V16I32, 32767)
    pairs = builder.select(builder.icmp_signed("<", pairs, lo), lo, pairs)
    pairs = builder.select(builder.icmp_signed(">", pairs, hi), hi, pairs)
    return builder.trunc(pairs, _V16I16)


def _madd(builder, a, b):
    """vpmaddwd (256 or 128 bit): int16 products, adjacent pairs summed into int32."""
    n = a.type.count
    if HAS_AVX2:
        name, ret = ("llvm.x86.avx2.pmadd.wd", _V8I32) if n == 16 else ("llvm.x86.sse2.pmadd.wd", _V4I32)
        return builder.call(_fn(builder, name, ret, [a.type, a.type]), [a, b])
    wide = ir.VectorType(_I32, n)
    return _pairs_even_odd(builder, builder.mul(builder.sext(a, wide), builder.sext(b, wide)), n // 2)


def _dot_i8(builder, qx, qy):
    """ggml's mul_sum_i8_pairs_float before the conversion: 8 int32 lanes of signed qx . signed qy."""
    ax = _sign_epi8(builder, qx, qx)
    sy = _sign_epi8(builder, qy, qx)
    return _madd(builder, _maddubs(builder, ax, sy), _splat(_V16I16, 1))


def _dot_u8(builder, ux, qy):
    """ggml's mul_sum_us8_pairs_float before the conversion: unsigned ux . signed qy in 8 int32 lanes."""
    return _madd(builder, _maddubs(builder, ux, qy), _splat(_V16I16, 1))


def _hsum8(builder, v):
    """hsum_float_8: (upper half + lower half), then lanes 0+2 and 1+3, then the two."""
    s4 = builder.fadd(_shuffle(builder, v, [4, 5, 6, 7]), _shuffle(builder, v, [0, 1, 2, 3]))
    return _hsum4(builder, s4)


def _hsum4(builder, s4):
    """The tail of hsum_float_8 on a 4-lane vector: (0 + 2) + (1 + 3)."""
    s2 = builder.fadd(s4, _shuffle(builder, s4, [2, 3, 2, 3]))
    lane0, lane1 = (builder.extract_element(s2, ir.Constant(_I32, i)) for i in (0, 1))
    return builder.fadd(lane0, lane1)


def _nibbles(builder, ptr, offset):
    """16 bytes as 32 values: the low nibbles, then the high nibbles (bytes_from_nibbles_32)."""
    qs = _load(builder, ptr, offset, _V16I8)
    lo = builder.and_(qs, _splat(_V16I8, 15))
    hi = builder.lshr(qs, _splat(_V16I8, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(_V32I32, list(range(32))))


# --- per-type block kernels: decode a weight block once, then update each activation row's accumulators ---
# state: one list of accumulators per activation row; `finish` turns a row's accumulators into the result.


class _Q8_0:
    w_bytes, x_bytes = 34, 34

    @staticmethod
    def init():
        return [ir.Constant(_V8F32, [0.0] * 8)]

    @staticmethod
    def decode(builder, wb):
        return _f16(builder, wb, 0), _load(builder, wb, 2, _V32I8)

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, qx = dec
        d = builder.fmul(dw, _f16(builder, xb, 0))
        q = builder.sitofp(_dot_i8(builder, qx, _load(builder, xb, 2, _V32I8)), _V8F32)
        return [_fma(builder, _broadcast(builder, d, _V8F32), q, acc[0])]

    @staticmethod
    def finish(builder, acc):
        return _hsum8(builder, acc[0])


class _Q5_0(_Q8_0):
    w_bytes = 22

    @staticmethod
    def decode(builder, wb):
        bits = builder.bitcast(_load(builder, wb, 2, _I32), ir.VectorType(_I1, 32))
        high = builder.shl(builder.zext(bits, _V32I8), _splat(_V32I8, 4))
        qx = builder.sub(builder.or_(_nibbles(builder, wb, 6), high), _splat(_V32I8, 16))
        return _f16(builder, wb, 0), qx


class _Q4_0(_Q8_0):
    w_bytes = 18

    @staticmethod
    def decode(builder, wb):
        return _f16(builder, wb, 0), builder.sub(_nibbles(builder, wb, 2), _splat(_V32I8, 8))


# ggml's repacked Q4_0 kernels (q4_0_8x8_q8_0, arch/x86/repack.cpp, gemm and gemv alike) keep one float
# accumulator per output: per block, acc = fma(float(exact integer dot), d_w * d_x, acc) from zero. The
# interleaved layout and its nibble XOR only decide which lane holds which output and how the codes are
# sign-extended (to the same q - 8), so this reads the plain GGUF layout.


class _Q4_0_repacked(_Q4_0):
    @staticmethod
    def init():
        return [ir.Constant(_F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, qx = dec
        isum = _reduce_add(builder, _dot_i8(builder, qx, _load(builder, xb, 2, _V32I8)))
        return [_fma(builder, builder.sitofp(isum, _F32), builder.fmul(dw, _f16(builder, xb, 0)), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]


class _Q4_1:
    w_bytes, x_bytes = 20, 36

    @staticmethod
    def init():
        return [ir.Constant(_V8F32, [0.0] * 8), ir.Constant(_F32, 0.0)]

    @staticmethod
    def decode(builder, wb):
        return _f16(builder, wb, 0), _f16(builder, wb, 2), _nibbles(builder, wb, 4)

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, mw, ux = dec
        summs = _fma(builder, mw, _f16(builder, xb, 2), acc[1])  # GCC contracts summs += m * s
        d = builder.fmul(dw, _f16(builder, xb, 0))
        q = builder.sitofp(_dot_u8(builder, ux, _load(builder, xb, 4, _V32I8)), _V8F32)
        return [_fma(builder, _broadcast(builder, d, _V8F32), q, acc[0]), summs]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(_hsum8(builder, acc[0]), acc[1])


def _k4_scales(builder, wb):
    """Q4_K's 6-bit scales and mins unpacked as ggml's utmp words: <16 x i16>, scales 0-7 then mins 0-7."""
    u0, u1, u2 = (_load(builder, wb, 4 + 4 * i, _I32) for i in range(3))

    def c(v):
        return ir.Constant(_I32, v)

    def bits(v, shift, mask):
        return builder.and_(builder.lshr(v, c(shift)), c(mask))

    u3 = builder.or_(bits(u2, 4, 0x0F0F0F0F), builder.shl(bits(u1, 6, 0x03030303), c(4)))
    w1 = builder.or_(builder.and_(u2, c(0x0F0F0F0F)), builder.shl(bits(u0, 6, 0x03030303), c(4)))
    w2 = builder.and_(u1, c(0x3F3F3F3F))
    w0 = builder.and_(u0, c(0x3F3F3F3F))
    vec = ir.Constant(_V4I32, ir.Undefined)
    for i, v in enumerate((w0, w1, w2, u3)):
        vec = builder.insert_element(vec, v, c(i))
    return builder.zext(builder.bitcast(vec, _V16I8), _V16I16)


class _Q4_K:
    w_bytes, x_bytes = 144, 292

    @staticmethod
    def init():
        return [ir.Constant(_V8F32, [0.0] * 8), ir.Constant(_V4F32, [0.0] * 4)]

    @staticmethod
    def decode(builder, wb):
        sm = _k4_scales(builder, wb)
        scales = [_shuffle(builder, sm, [i] * 16) for i in range(8)]
        mins = _shuffle(builder, sm, range(8, 16))
        quants = []
        for j in range(4):
            q4 = _load(builder, wb, 16 + 32 * j, _V32I8)
            quants.append(builder.and_(q4, _splat(_V32I8, 15)))
            quants.append(builder.lshr(q4, _splat(_V32I8, 4)))
        return _f16(builder, wb, 0), _f16(builder, wb, 2), scales, mins, quants

    @staticmethod
    def ints(builder, dec, xb):
        """(8 int32 lanes of sum sc * q * x, 4 int32 lanes of sum min * bsum) of one super-block."""
        _, _, scales, mins, quants = dec
        bsums = _load(builder, xb, 260, _V16I16)
        q8s = builder.add(_shuffle(builder, bsums, range(0, 16, 2)), _shuffle(builder, bsums, range(1, 16, 2)))
        sumi = None
        for s in range(8):
            p = _madd(builder, scales[s], _maddubs(builder, quants[s], _load(builder, xb, 4 + 32 * s, _V32I8)))
            sumi = p if sumi is None else builder.add(sumi, p)
        return sumi, _madd(builder, mins, q8s)

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw = dec[:2]
        yd = _load(builder, xb, 0, _F32)
        d = builder.fmul(yd, dw)
        dmin = builder.fmul(builder.fneg(yd), dminw)
        sumi, prod = _Q4_K.ints(builder, dec, xb)
        acc_m = _fma(builder, _broadcast(builder, dmin, _V4F32), builder.sitofp(prod, _V4F32), acc[1])
        acc_v = _fma(builder, _broadcast(builder, d, _V8F32), builder.sitofp(sumi, _V8F32), acc[0])
        return [acc_v, acc_m]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(_hsum8(builder, acc[0]), _hsum4(builder, acc[1]))


class _Q5_K(_Q4_K):
    w_bytes = 176

    @staticmethod
    def init():
        return [ir.Constant(_V8F32, [0.0] * 8), ir.Constant(_F32, 0.0)]

    @staticmethod
    def decode(builder, wb):
        sm = _k4_scales(builder, wb)
        scales = [_shuffle(builder, sm, [i] * 16) for i in range(8)]
        mins = _shuffle(builder, sm, range(8, 16))
        qh = _load(builder, wb, 16, _V32I8)
        quants = []
        for j in range(4):
            q5 = _load(builder, wb, 48 + 32 * j, _V32I8)
            lows = (builder.and_(q5, _splat(_V32I8, 15)), builder.lshr(q5, _splat(_V32I8, 4)))
            for half, lo in enumerate(lows):  # the fifth bit of sub-block 2j + half is bit 2j + half of qh
                h = builder.and_(builder.lshr(qh, _splat(_V32I8, 2 * j + half)), _splat(_V32I8, 1))
                quants.append(builder.or_(lo, builder.shl(h, _splat(_V32I8, 4))))
        return _f16(builder, wb, 0), _f16(builder, wb, 2), scales, mins, quants

    @staticmethod
    def update(builder, dec, xb, acc):
        # as Q4_K's, except that the mins' integer dot is summed to one int32 and fused into a scalar
        dw, dminw = dec[:2]
        yd = _load(builder, xb, 0, _F32)
        d = builder.fmul(yd, dw)
        dmin = builder.fmul(builder.fneg(yd), dminw)
        sumi, prod = _Q4_K.ints(builder, dec, xb)
        summs = _fma(builder, dmin, builder.sitofp(_reduce_add(builder, prod), _F32), acc[1])
        acc_v = _fma(builder, _broadcast(builder, d, _V8F32), builder.sitofp(sumi, _V8F32), acc[0])
        return [acc_v, summs]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(_hsum8(builder, acc[0]), acc[1])


class _Q6_K:
    w_bytes, x_bytes = 210, 292

    @staticmethod
    def init():
        return [ir.Constant(_V8F32, [0.0] * 8)]

    @staticmethod
    def decode(builder, wb):
        sc16 = builder.sext(_load(builder, wb, 192, _V16I8), _V16I16)
        quants, scales = [], []
        for j in range(2):
            b1 = _load(builder, wb, 64 * j, _V32I8)
            b2 = _load(builder, wb, 64 * j + 32, _V32I8)
            h = _load(builder, wb, 128 + 32 * j, _V32I8)

            def mask(v, m):
                return builder.and_(v, _splat(_V32I8, m))

            lo4 = [mask(b1, 15), mask(b2, 15), builder.lshr(b1, _splat(_V32I8, 4)), builder.lshr(b2, _splat(_V32I8, 4))]
            hi2 = [
                builder.shl(mask(h, 3), _splat(_V32I8, 4)),
                builder.shl(mask(h, 12), _splat(_V32I8, 2)),
                mask(h, 48),
                builder.lshr(mask(h, 192), _splat(_V32I8, 2)),
            ]
            for p in range(4):
                quants.append(builder.or_(lo4[p], hi2[p]))
                i = 4 * j + p
                scales.append(_shuffle(builder, sc16, [2 * i] * 8 + [2 * i + 1] * 8))
        return _f16(builder, wb, 208), sc16, quants, scales

    @staticmethod
    def ints(builder, dec, xb):
        """8 int32 lanes of sum sc * (q - 32) * x of one super-block."""
        _, sc16, quants, scales = dec
        bsums = _load(builder, xb, 260, _V16I16)
        offset = builder.shl(_madd(builder, bsums, sc16), _splat(_V8I32, 5))
        sumi = None
        for s in range(8):
            p = _madd(builder, scales[s], _maddubs(builder, quants[s], _load(builder, xb, 4 + 32 * s, _V32I8)))
            sumi = p if sumi is None else builder.add(sumi, p)
        return builder.sub(sumi, offset)

    @staticmethod
    def update(builder, dec, xb, acc):
        d = builder.fmul(_load(builder, xb, 0, _F32), dec[0])
        sumi = _Q6_K.ints(builder, dec, xb)
        return [_fma(builder, _broadcast(builder, d, _V8F32), builder.sitofp(sumi, _V8F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return _hsum8(builder, acc[0])


def _reduce_add(builder, v):
    """Sum of the int32 lanes (exact, so the order does not matter)."""
    return builder.call(_fn(builder, f"llvm.vector.reduce.add.v{v.type.count}i32", _I32, [v.type]), [v])


# ggml's tiled K-quant matmul (ggml-cpu/tiled, AVX2 microkernel) per output and super-block: the whole
# block's integer dot s1 (and Q4_K's sum of mins times bsums s2) as one int32, res = d_w * float(s1)
# (Q4_K: res = fnmadd(dmin_w, float(s2), res)), then acc = fma(res, d_x, acc), blocks in order from zero.


class _Q4_K_tiled(_Q4_K):
    @staticmethod
    def init():
        return [ir.Constant(_F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw = dec[:2]
        sumi, prod = _Q4_K.ints(builder, dec, xb)
        res = builder.fmul(dw, builder.sitofp(_reduce_add(builder, sumi), _F32))
        res = _fma(builder, builder.fneg(dminw), builder.sitofp(_reduce_add(builder, prod), _F32), res)
        return [_fma(builder, res, _load(builder, xb, 0, _F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]


class _Q5_K_tiled(_Q5_K):
    # ggml runs Q5_K through the same tiled microkernel as Q4_K (5-bit codes in the same byte lanes)
    init = staticmethod(_Q4_K_tiled.init)
    update = staticmethod(_Q4_K_tiled.update)
    finish = staticmethod(_Q4_K_tiled.finish)


# ggml's repacked Q4_K kernels (q4_K_8x8_q8_K, arch/x86/repack.cpp) per output keep two float accumulators fed
# by fused multiply-adds of exact integer sums, acc with d_w * d_x and acc_min with dmin_w * d_x; the result is
# acc - acc_min. The gemv (activation rows left over after groups of 4) adds once per super-block, the gemm
# (groups of 4 rows) once per pair of 32-element sub-blocks. The interleaved layout only decides which SIMD
# lane holds which output, so these read the plain GGUF layout.


class _Q4_K_gemv(_Q4_K):
    @staticmethod
    def init():
        return [ir.Constant(_F32, 0.0), ir.Constant(_F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw = dec[:2]
        yd = _load(builder, xb, 0, _F32)
        sumi, prod = _Q4_K.ints(builder, dec, xb)
        a = _fma(builder, builder.sitofp(_reduce_add(builder, sumi), _F32), builder.fmul(dw, yd), acc[0])
        a_min = _fma(builder, builder.sitofp(_reduce_add(builder, prod), _F32), builder.fmul(dminw, yd), acc[1])
        return [a, a_min]

    @staticmethod
    def finish(builder, acc):
        return builder.fsub(acc[0], acc[1])


class _Q4_K_gemm(_Q4_K_gemv):
    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw, scales, mins, quants = dec
        yd = _load(builder, xb, 0, _F32)
        d, dmin = builder.fmul(dw, yd), builder.fmul(dminw, yd)
        bsums = _load(builder, xb, 260, _V16I16)
        q8s = builder.add(_shuffle(builder, bsums, range(0, 16, 2)), _shuffle(builder, bsums, range(1, 16, 2)))
        pair_mins = _madd(builder, mins, q8s)  # lane p: min[2p] * bsum[2p] + min[2p+1] * bsum[2p+1]
        a, a_min = acc
        for p in range(4):
            dots = [
                _madd(builder, scales[s], _maddubs(builder, quants[s], _load(builder, xb, 4 + 32 * s, _V32I8)))
                for s in (2 * p, 2 * p + 1)
            ]
            isum = _reduce_add(builder, builder.add(dots[0], dots[1]))
            imin = builder.extract_element(pair_mins, ir.Constant(_I32, p))
            a = _fma(builder, builder.sitofp(isum, _F32), d, a)
            a_min = _fma(builder, builder.sitofp(imin, _F32), dmin, a_min)
        return [a, a_min]


class _Q6_K_tiled(_Q6_K):
    @staticmethod
    def init():
        return [ir.Constant(_F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        res = builder.fmul(dec[0], builder.sitofp(_reduce_add(builder, _Q6_K.ints(builder, dec, xb)), _F32))
        return [_fma(builder, res, _load(builder, xb, 0, _F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]


def _make_tile(kind, n_rows):
    """Intrinsic (w, r, xq, t, nb) -> n_rows float32: weight row r against activation rows t..t+n_rows-1,
    nb blocks each (w, xq: uint8 2-D, C order)."""

    def tile(typingctx, w, r, xq, t, nb):
        if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array) and xq.ndim == 2):
            return None
        sig = types.UniTuple(types.float32, n_rows)(w, r, xq, t, nb)

        def codegen(context, builder, signature, args):
            wa = context.make_array(signature.args[0])(context, builder, args[0])
            xa = context.make_array(signature.args[2])(context, builder, args[2])

            def idx(i):
                return context.cast(builder, args[i], signature.args[i], types.intp)

            wstride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
            xstride = cgutils.unpack_tuple(builder, xa.strides, 2)[0]
            intp = wstride.type
            wrow = builder.gep(wa.data, [builder.mul(idx(1), wstride)])
            t0 = idx(3)
            xrows = [
                builder.gep(xa.data, [builder.mul(builder.add(t0, ir.Constant(intp, k)), xstride)])
                for k in range(n_rows)
            ]
            slots = [[cgutils.alloca_once_value(builder, v) for v in kind.init()] for _ in range(n_rows)]
            with cgutils.for_range(builder, idx(4)) as loop:
                b = loop.index
                dec = kind.decode(builder, builder.gep(wrow, [builder.mul(b, ir.Constant(intp, kind.w_bytes))]))
                xoff = builder.mul(b, ir.Constant(intp, kind.x_bytes))
                for k in range(n_rows):
                    acc = [builder.load(s) for s in slots[k]]
                    new = kind.update(builder, dec, builder.gep(xrows[k], [xoff]), acc)
                    for s, v in zip(slots[k], new, strict=True):
                        builder.store(v, s)
            outs = [kind.finish(builder, [builder.load(s) for s in slots[k]]) for k in range(n_rows)]
            return context.make_tuple(builder, signature.return_type, outs)

        return sig, codegen

    tile.__name__ = tile.__qualname__ = f"tile{n_rows}_{kind.__name__.strip('_').lower()}"
    return intrinsic(tile)


_q8_0_1, _q8_0_n = _make_tile(_Q8_0, 1), _make_tile(_Q8_0, _TILE)
_q5_0_1, _q5_0_n = _make_tile(_Q5_0, 1), _make_tile(_Q5_0, _TILE)
_q4_0_1, _q4_0_n = _make_tile(_Q4_0, 1), _make_tile(_Q4_0, _TILE)
_q4_0r_1, _q4_0r_n = _make_tile(_Q4_0_repacked, 1), _make_tile(_Q4_0_repacked, _TILE)
_q4_1_1, _q4_1_n = _make_tile(_Q4_1, 1), _make_tile(_Q4_1, _TILE)
_q4_k_1, _q4_k_n = _make_tile(_Q4_K, 1), _make_tile(_Q4_K, _TILE)
_q6_k_1, _q6_k_n = _make_tile(_Q6_K, 1), _make_tile(_Q6_K, _TILE)
_q5_k_1, _q5_k_n = _make_tile(_Q5_K, 1), _make_tile(_Q5_K, _TILE)
_q4_kt_1, _q4_kt_n = _make_tile(_Q4_K_tiled, 1), _make_tile(_Q4_K_tiled, _TILE)
_q6_kt_1, _q6_kt_n = _make_tile(_Q6_K_tiled, 1), _make_tile(_Q6_K_tiled, _TILE)
_q5_kt_1, _q5_kt_n = _make_tile(_Q5_K_tiled, 1), _make_tile(_Q5_K_tiled, _TILE)
_q4_kgemv_1 = _make_tile(_Q4_K_gemv, 1)
_q4_kgemm_1, _q4_kgemm_n = _make_tile(_Q4_K_gemm, 1), _make_tile(_Q4_K_gemm, _TILE)

_TILED = 100  # kernel code offset of the tiled K-quant variants
_GEMV, _GEMM = 200, 201  # repacked Q4_K kernels
_Q4_0_REPACK = 202  # repacked Q4_0 kernels (gemm and gemv give the same bits)


@njit(cache=True, inline="always")
def _tile_n(kernel, w, r, xq, t, nb):
    if kernel == Q8_0:
        return _q8_0_n(w, r, xq, t, nb)
    if kernel == Q5_0:
        return _q5_0_n(w, r, xq, t, nb)
    if kernel == Q4_0:
        return _q4_0_n(w, r, xq, t, nb)
    if kernel == _Q4_0_REPACK:
        return _q4_0r_n(w, r, xq, t, nb)
    if kernel == Q4_1:
        return _q4_1_n(w, r, xq, t, nb)
    if kernel == Q4_K:
        return _q4_k_n(w, r, xq, t, nb)
    if kernel == Q6_K:
        return _q6_k_n(w, r, xq, t, nb)
    if kernel == _TILED + Q4_K:
        return _q4_kt_n(w, r, xq, t, nb)
    if kernel == Q5_K:
        return _q5_k_n(w, r, xq, t, nb)
    if kernel == _TILED + Q5_K:
        return _q5_kt_n(w, r, xq, t, nb)
    if kernel == _GEMM:
        return _q4_kgemm_n(w, r, xq, t, nb)
    return _q6_kt_n(w, r, xq, t, nb)


@njit(cache=True, inline="always")
def _tile_1(kernel, w, r, xq, t, nb):
    if kernel == Q8_0:
        return _q8_0_1(w, r, xq, t, nb)[0]
    if kernel == Q5_0:
        return _q5_0_1(w, r, xq, t, nb)[0]
    if kernel == Q4_0:
        return _q4_0_1(w, r, xq, t, nb)[0]
    if kernel == _Q4_0_REPACK:
        return _q4_0r_1(w, r, xq, t, nb)[0]
    if kernel == Q4_1:
        return _q4_1_1(w, r, xq, t, nb)[0]
    if kernel == Q4_K:
        return _q4_k_1(w, r, xq, t, nb)[0]
    if kernel == Q6_K:
        return _q6_k_1(w, r, xq, t, nb)[0]
    if kernel == _TILED + Q4_K:
        return _q4_kt_1(w, r, xq, t, nb)[0]
    if kernel == Q5_K:
        return _q5_k_1(w, r, xq, t, nb)[0]
    if kernel == _TILED + Q5_K:
        return _q5_kt_1(w, r, xq, t, nb)[0]
    if kernel == _GEMV:
        return _q4_kgemv_1(w, r, xq, t, nb)[0]
    if kernel == _GEMM:
        return _q4_kgemm_1(w, r, xq, t, nb)[0]
    return _q6_kt_1(w, r, xq, t, nb)[0]


@njit(parallel=True, cache=True, nogil=True)
def _mul_mat(w, kernel, xq, nb):
    n_tok = xq.shape[0]
    out = np.empty((n_tok, w.shape[0]), np.float32)
    for r in prange(w.shape[0]):
        t = 0
        while t + _TILE <= n_tok:
            v = _tile_n(kernel, w, r, xq, t, nb)
            for k in range(_TILE):
                out[t + k, r] = v[k]
            t += _TILE
        while t < n_tok:
            out[t, r] = _tile_1(kernel, w, r, xq, t, nb)
            t += 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def _mul_vec(w, kernel, xq, nb):
    # one activation row (a decode step): a loop of its own compiles to faster code than _mul_mat's
    # (22% on Gemma 3's 262144-row output head)
    out = np.empty((1, w.shape[0]), np.float32)
    for r in prange(w.shape[0]):
        out[0, r] = _tile_1(kernel, w, r, xq, 0, nb)
    return out


def _run(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int, kernel: int) -> np.ndarray:
    block, w_bytes, x_bytes = _LAYOUT[ggml_type]
    if n_cols % block:
        raise ValueError(f"n_cols {n_cols} is not a multiple of the block size {block}")
    nb = n_cols // block
    w = np.ascontiguousarray(w, dtype=np.uint8)
    xq = np.ascontiguousarray(xq, dtype=np.uint8)
    if w.ndim != 2 or w.shape[1] != nb * w_bytes or xq.ndim != 2 or xq.shape[1] != nb * x_bytes:
        raise ValueError(f"shapes {w.shape} x {xq.shape} do not fit {n_cols} columns of ggml type {ggml_type}")
    if xq.shape[0] == 1:
        return _mul_vec(w, kernel, xq, nb)
    return _mul_mat(w, kernel, xq, nb)


def mul_mat_vec_dot(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: out[t, r] = ggml x86 vec_dot of weight row w[r] and activation row xq[t].

    w: uint8 [n_out, row_bytes] rows of ggml type Q8_0 (8), Q5_0 (6), Q4_0 (2), Q4_1 (3), Q4_K (12), Q5_K (13)
    or Q6_K (14); xq: uint8 [n_tok, bytes] rows of the matching activation type (Q8_0 for Q8_0/Q5_0/Q4_0, Q8_1
    for Q4_1, Q8_K for the K-quants) as the
    `ggml_exact.quantize` functions make them; n_cols: elements per row. Parallel over weight rows; the
    result does not depend on the thread count. For Q8_0/Q5_0/Q4_0 this is also tinyBLAS_Q0_AVX's result.
    """
    if ggml_type not in _LAYOUT:
        raise ValueError(f"ggml type {ggml_type} has no exact vec_dot kernel")
    return _run(w, ggml_type, xq, n_cols, ggml_type)


def mul_mat_tiled(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out] as ggml's tiled K-quant matmul (ggml-cpu/tiled, AVX2) computes it.

    Q4_K (12), Q5_K (13) or Q6_K (14) weight rows w times Q8_K activation rows xq. Per output and super-block
    it sums the whole block's integer dot exactly, scales it once by the weight's d (Q4_K/Q5_K: minus dmin
    times the mins' dot, fused) and fused-multiply-adds that times the activation's d into one float accumulator.
    """
    if ggml_type not in (Q4_K, Q5_K, Q6_K):
        raise ValueError(f"ggml type {ggml_type} has no tiled kernel")
    return _run(w, ggml_type, xq, n_cols, _TILED + ggml_type)


def mul_mat_q4_K_repacked(w: np.ndarray, x: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: x @ W.T for a Q4_K weight as ggml computes it from its CPU_REPACK buffer.

    On AVX2 llama.cpp repacks every Q4_K weight with n_out % 8 == 0 at load (q4_K_8x8_q8_K) and uses it
    for any number of activation rows: rows [0, n4), n4 = n_tok - n_tok % 4, through the gemm kernel and the
    rest through the gemv kernel. Activations are quantized to Q8_K (ggml's 4-row quantizer differs from
    quantize_row_q8_K only on a +max/-max tie, where the codes and the scale change sign together, so the
    products are the same).
    """
    return _repacked_q4_K(w, quantize_q8_K(x), n_cols)


def _repacked_q4_K(w: np.ndarray, xq: np.ndarray, n_cols: int) -> np.ndarray:
    n4 = xq.shape[0] - xq.shape[0] % _TILE
    if n4 == xq.shape[0]:
        return _run(w, Q4_K, xq, n_cols, _GEMM)
    if n4 == 0:
        return _run(w, Q4_K, xq, n_cols, _GEMV)
    return np.concatenate([_run(w, Q4_K, xq[:n4], n_cols, _GEMM), _run(w, Q4_K, xq[n4:], n_cols, _GEMV)])


def mul_mat_q4_0_repacked(w: np.ndarray, x: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: x @ W.T for a Q4_0 weight as ggml computes it from its CPU_REPACK buffer.

    On AVX2 llama.cpp repacks every Q4_0 weight with n_out % 8 == 0 at load (q4_0_8x8_q8_0) and runs the
    gemm kernel on activation rows in groups of four and the gemv kernel on the rest. Both sum each block's
    integer dot exactly and fused-multiply-add it times d_w * d_x into one float per output, so all rows get
    the same arithmetic; the 4-row Q8_0 quantizer makes the same bytes as quantize_row_q8_0 (interleaved).
    """
    return _run(w, Q4_0, quantize_q8_0(x), n_cols, _Q4_0_REPACK)


# ggml's activation quantizer per vec_dot type; weight type -> the quantizer of its activation type
_QUANTIZE = {GGMLType.Q8_0: quantize_q8_0, GGMLType.Q8_1: quantize_q8_1, GGMLType.Q8_K: quantize_q8_K}
_ACTIVATION = {int(t): _QUANTIZE[QUANT_TYPES[t].activation] for t in types_with(GGML_EXACT)}
TILED_MIN_TOKENS = 8  # ggml_tiled_min_batch


def mul_mat_q(w: np.ndarray, ggml_type: int, x: np.ndarray, n_cols: int, repack: bool = True) -> np.ndarray:
    """ggml_compute_forward_mul_mat on the CPU (x86 AVX2) for quantized weights: float32 [n_tok, n_out].

    x (float32 [n_tok, n_cols]) is quantized to the weight type's vec_dot type (Q8_0 for Q8_0/Q5_0/Q4_0, Q8_1
    for Q4_1, Q8_K for Q4_K/Q5_K/Q6_K) exactly as ggml does, then multiplied by the kernel ggml picks:
    - Q4_K and Q4_0 with n_out % 8 == 0, when `repack` (llama.cpp's model loader puts such weights in
      ggml's CPU_REPACK buffer; a tensor in a plain ggml buffer is not repacked): `mul_mat_q4_K_repacked`,
      `mul_mat_q4_0_repacked`;
    - Q4_K/Q5_K/Q6_K with n_tok >= 8: the tiled K-quant matmul (on by default; GGML_CPU_TILED_MM=0 turns it off
      in ggml), `mul_mat_tiled`;
    - Q8_0/Q5_0/Q4_0 with n_tok >= 2: llamafile_sgemm's tinyBLAS_Q0_AVX, which gives vec_dot's bits;
    - otherwise vec_dot per output, `mul_mat_vec_dot`.
    Not covered: the other types ggml repacks on AVX2 (IQ4_NL, MXFP4).
    """
    if ggml_type not in _ACTIVATION:
        raise ValueError(f"ggml type {ggml_type} has no exact kernel")
    return _mul_mat_quantized(w, ggml_type, _ACTIVATION[ggml_type](x), n_cols, repack)


def mul_mat_q_shared(weights: list[tuple[np.ndarray, int]], x: np.ndarray, n_cols: int) -> list[np.ndarray]:
    """`mul_mat_q` of one input x with several (w, ggml_type) weights (Q/K/V, gate/up), quantizing x once per
    activation type: ggml quantizes it once per matmul, to the same bytes."""
    quantized: dict[object, np.ndarray] = {}
    out = []
    for w, ggml_type in weights:
        if ggml_type not in _ACTIVATION:
            raise ValueError(f"ggml type {ggml_type} has no exact kernel")
        quantize = _ACTIVATION[ggml_type]
        if quantize not in quantized:
            quantized[quantize] = quantize(x)
        out.append(_mul_mat_quantized(w, ggml_type, quantized[quantize], n_cols, True))
    return out


def _mul_mat_quantized(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int, repack: bool) -> np.ndarray:
    if repack and ggml_type == Q4_K and w.shape[0] % 8 == 0:
        return _repacked_q4_K(w, xq, n_cols)
    if repack and ggml_type == Q4_0 and w.shape[0] % 8 == 0:
        return _run(w, Q4_0, xq, n_cols, _Q4_0_REPACK)
    if ggml_type in (Q4_K, Q5_K, Q6_K) and xq.shape[0] >= TILED_MIN_TOKENS:
        return mul_mat_tiled(w, ggml_type, xq, n_cols)
    return mul_mat_vec_dot(w, ggml_type, xq, n_cols)
