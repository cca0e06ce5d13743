"""LLVM IR building blocks of the ggml-exact dot kernels: the x86 integer instructions ggml uses (vpsignb,
vpmaddubsw, vpmaddwd) as intrinsics on AVX2 and as portable IR with the same integer results elsewhere,
ggml's float lane sums (hsum_float_8), fused multiply-adds, unaligned loads of block fields.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from embedkit.kernels.cpu.isa import HAS_AVX2  # the target Numba compiles for (EMBEDKIT_CPU_ISA)

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
F32 = ir.FloatType()
V4F32 = ir.VectorType(F32, 4)
V8F32 = ir.VectorType(F32, 8)
V4I32 = ir.VectorType(I32, 4)
V8I32 = ir.VectorType(I32, 8)
V16I32 = ir.VectorType(I32, 16)
V32I32 = ir.VectorType(I32, 32)
V8I16 = ir.VectorType(I16, 8)
V16I16 = ir.VectorType(I16, 16)
V16I8 = ir.VectorType(I8, 16)
V32I8 = ir.VectorType(I8, 32)




def declare(builder, name, ret, args):
    """The LLVM function `name` (an intrinsic) in the module being built."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def splat(vec_type, value):
    return ir.Constant(vec_type, [value] * vec_type.count)


def shuffle(builder, v, idx):
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, len(idx)), list(idx)))


def broadcast(builder, scalar, vec_type):
    v = builder.insert_element(ir.Constant(vec_type, ir.Undefined), scalar, ir.Constant(I32, 0))
    return shuffle(builder, v, [0] * vec_type.count)


def load(builder, ptr, offset, ty):
    p = builder.gep(ptr, [offset if isinstance(offset, ir.Value) else ir.Constant(I32, offset)])
    return builder.load(builder.bitcast(p, ty.as_pointer()), align=1)


def f16(builder, ptr, offset):
    return builder.fpext(builder.bitcast(load(builder, ptr, offset, I16), ir.HalfType()), F32)


def fma(builder, a, b, c):
    """a * b + c with one rounding per lane (_mm256_fmadd_ps / vfmadd231ss)."""
    t = a.type
    name = "llvm.fma.f32" if t == F32 else f"llvm.fma.v{t.count}f32"
    return builder.call(declare(builder, name, t, [t, t, t]), [a, b, c])


# --- the x86 integer instructions ggml uses, as intrinsics on AVX2 and as equivalent portable IR elsewhere ---


def _pairs_even_odd(builder, prod, n):
    even = shuffle(builder, prod, range(0, 2 * n, 2))
    odd = shuffle(builder, prod, range(1, 2 * n, 2))
    return builder.add(even, odd)


def sign_epi8(builder, a, b):
    """vpsignb: a negated (wrapping) where b < 0, zero where b == 0."""
    if HAS_AVX2:
        return builder.call(declare(builder, "llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8]), [a, b])
    zero = splat(V32I8, 0)
    neg = builder.select(builder.icmp_signed("<", b, zero), builder.sub(zero, a), a)
    return builder.select(builder.icmp_signed("==", b, zero), zero, neg)


def maddubs(builder, u, s):
    """vpmaddubsw: unsigned bytes u times signed bytes s, adjacent pairs summed with int16 saturation."""
    if HAS_AVX2:
        return builder.call(declare(builder, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [V32I8, V32I8]), [u, s])
    prod = builder.mul(builder.zext(u, V32I32), builder.sext(s, V32I32))
    pairs = _pairs_even_odd(builder, prod, 16)
    lo, hi = splat(V16I32, -32768), splat(V16I32, 32767)
    pairs = builder.select(builder.icmp_signed("<", pairs, lo), lo, pairs)
    pairs = builder.select(builder.icmp_signed(">", pairs, hi), hi, pairs)
    return builder.trunc(pairs, V16I16)


def madd(builder, a, b):
    """vpmaddwd (256 or 128 bit): int16 products, adjacent pairs summed into int32."""
    n = a.type.count
    if HAS_AVX2:
        name, ret = ("llvm.x86.avx2.pmadd.wd", V8I32) if n == 16 else ("llvm.x86.sse2.pmadd.wd", V4I32)
        return builder.call(declare(builder, name, ret, [a.type, a.type]), [a, b])
    wide = ir.VectorType(I32, n)
    return _pairs_even_odd(builder, builder.mul(builder.sext(a, wide), builder.sext(b, wide)), n // 2)


def dot_i8(builder, qx, qy):
    """ggml's mul_sum_i8_pairs_float before the conversion: 8 int32 lanes of signed qx . signed qy."""
    ax = sign_epi8(builder, qx, qx)
    sy = sign_epi8(builder, qy, qx)
    return madd(builder, maddubs(builder, ax, sy), splat(V16I16, 1))


def dot_u8(builder, ux, qy):
    """ggml's mul_sum_us8_pairs_float before the conversion: unsigned ux . signed qy in 8 int32 lanes."""
    return madd(builder, maddubs(builder, ux, qy), splat(V16I16, 1))


def hsum8(builder, v):
    """hsum_float_8: (upper half + lower half), then lanes 0+2 and 1+3, then the two."""
    s4 = builder.fadd(shuffle(builder, v, [4, 5, 6, 7]), shuffle(builder, v, [0, 1, 2, 3]))
    return hsum4(builder, s4)


def hsum4(builder, s4):
    """The tail of hsum_float_8 on a 4-lane vector: (0 + 2) + (1 + 3)."""
    s2 = builder.fadd(s4, shuffle(builder, s4, [2, 3, 2, 3]))
    lane0, lane1 = (builder.extract_element(s2, ir.Constant(I32, i)) for i in (0, 1))
    return builder.fadd(lane0, lane1)


def nibbles(builder, ptr, offset):
    """16 bytes as 32 values: the low nibbles, then the high nibbles (bytes_from_nibbles_32)."""
    qs = load(builder, ptr, offset, V16I8)
    lo = builder.and_(qs, splat(V16I8, 15))
    hi = builder.lshr(qs, splat(V16I8, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(V32I32, list(range(32))))


def reduce_add(builder, v):
    """Sum of the int32 lanes (exact, so the order does not matter)."""
    return builder.call(declare(builder, f"llvm.vector.reduce.add.v{v.type.count}i32", I32, [v.type]), [v])
