"""ggml-exact block kernels of the 32-element quant types: Q8_0, Q5_0, Q4_0 (x Q8_0 activations) and Q4_1 (x Q8_1).

Each class is one weight type's block dot as ggml's x86 AVX2 vec_dot computes it (`dots` turns it into a
tile kernel): `decode` reads a weight block once, `update` adds one activation block's product into a
row's accumulators (`init`), `finish` sums them in ggml's order. Block sizes come from the quant registry.
"""

from __future__ import annotations

from llvmlite import ir

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact.simd import (
    F32,
    I1,
    I32,
    V8F32,
    V32I8,
    broadcast,
    dot_i8,
    dot_u8,
    f16,
    fma,
    hsum8,
    load,
    nibbles,
    reduce_add,
    splat,
)
from embedkit.quant import QUANT_TYPES


def block_bytes(t: GGMLType) -> tuple[int, int]:
    """(weight block bytes, activation block bytes) of a weight type, from the quant registry."""
    return QUANT_TYPES[t].type_size, QUANT_TYPES[t].activation_bytes


class BlockQ8_0:
    w_bytes, x_bytes = block_bytes(GGMLType.Q8_0)

    @staticmethod
    def init():
        return [ir.Constant(V8F32, [0.0] * 8)]

    @staticmethod
    def decode(builder, wb):
        return f16(builder, wb, 0), load(builder, wb, 2, V32I8)

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, qx = dec
        d = builder.fmul(dw, f16(builder, xb, 0))
        q = builder.sitofp(dot_i8(builder, qx, load(builder, xb, 2, V32I8)), V8F32)
        return [fma(builder, broadcast(builder, d, V8F32), q, acc[0])]

    @staticmethod
    def finish(builder, acc):
        return hsum8(builder, acc[0])


class BlockQ5_0(BlockQ8_0):
    w_bytes, x_bytes = block_bytes(GGMLType.Q5_0)

    @staticmethod
    def decode(builder, wb):
        bits = builder.bitcast(load(builder, wb, 2, I32), ir.VectorType(I1, 32))
        high = builder.shl(builder.zext(bits, V32I8), splat(V32I8, 4))
        qx = builder.sub(builder.or_(nibbles(builder, wb, 6), high), splat(V32I8, 16))
        return f16(builder, wb, 0), qx


class BlockQ4_0(BlockQ8_0):
    w_bytes, x_bytes = block_bytes(GGMLType.Q4_0)

    @staticmethod
    def decode(builder, wb):
        return f16(builder, wb, 0), builder.sub(nibbles(builder, wb, 2), splat(V32I8, 8))


# ggml's repacked Q4_0 kernels (q4_0_8x8_q8_0, arch/x86/repack.cpp, gemm and gemv alike) keep one float
# accumulator per output: per block, acc = fma(float(exact integer dot), d_w * d_x, acc) from zero. The
# interleaved layout and its nibble XOR only decide which lane holds which output and how the codes are
# sign-extended (to the same q - 8), so this reads the plain GGUF layout.


class BlockQ4_0Repacked(BlockQ4_0):
    @staticmethod
    def init():
        return [ir.Constant(F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, qx = dec
        isum = reduce_add(builder, dot_i8(builder, qx, load(builder, xb, 2, V32I8)))
        return [fma(builder, builder.sitofp(isum, F32), builder.fmul(dw, f16(builder, xb, 0)), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]


class BlockQ4_1:
    w_bytes, x_bytes = block_bytes(GGMLType.Q4_1)

    @staticmethod
    def init():
        return [ir.Constant(V8F32, [0.0] * 8), ir.Constant(F32, 0.0)]

    @staticmethod
    def decode(builder, wb):
        return f16(builder, wb, 0), f16(builder, wb, 2), nibbles(builder, wb, 4)

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, mw, ux = dec
        summs = fma(builder, mw, f16(builder, xb, 2), acc[1])  # GCC contracts summs += m * s
        d = builder.fmul(dw, f16(builder, xb, 0))
        q = builder.sitofp(dot_u8(builder, ux, load(builder, xb, 4, V32I8)), V8F32)
        return [fma(builder, broadcast(builder, d, V8F32), q, acc[0]), summs]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(hsum8(builder, acc[0]), acc[1])
