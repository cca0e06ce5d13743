"""Bit-level scalar conversions for kernels: IEEE half and bfloat16 to float32 and back.

They compile to single LLVM instructions (`fpext half`/`fptrunc`, `bitcast`), so they are exact,
vectorisable and, with F16C, become `vcvtph2ps`/`vcvtps2ph`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _to_i16(builder, value):
    width = value.type.width
    if width > 16:
        return builder.trunc(value, ir.IntType(16))
    if width < 16:
        return builder.zext(value, ir.IntType(16))
    return value


@intrinsic
def f16_to_f32(typingctx, bits):
    """float32 value of the IEEE half whose 16 bits are the low bits of integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(_to_i16(builder, args[0]), ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def f32_to_f16(typingctx, value):
    """The 16 bits (uint16) of float32 `value` rounded to IEEE half (round to nearest even, as numpy)."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type != ir.FloatType():
            v = builder.fptrunc(v, ir.FloatType())
        half = builder.fptrunc(v, ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(value), codegen


@intrinsic
def bits_to_f32(typingctx, bits):
    """float32 whose bit pattern is the low 32 bits of integer `bits` (bf16 is `bits_to_f32(b << 16)`)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        width = v.type.width
        if width > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif width < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def f32_to_bits(typingctx, value):
    """The bit pattern of float32 `value` as int32 (a bitcast, no conversion)."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.float32)
        return builder.bitcast(v, ir.IntType(32))

    return types.int32(value), codegen


@njit(cache=True, inline="always")
def load_f16(buf, offset):
    """float32 of the little-endian IEEE half stored at `buf[offset:offset + 2]` (a uint8 array)."""
    return f16_to_f32(np.int32(buf[offset]) | (np.int32(buf[offset + 1]) << 8))


@njit(cache=True, inline="always")
def load_u32(buf, offset):
    """The little-endian uint32 stored at `buf[offset:offset + 4]` (a uint8 array)."""
    return (
        np.uint32(buf[offset])
        | (np.uint32(buf[offset + 1]) << 8)
        | (np.uint32(buf[offset + 2]) << 16)
        | (np.uint32(buf[offset + 3]) << 24)
    )


@njit(cache=True, inline="always")
def store_f16(buf, offset, value):
    """Write float32 `value` as a little-endian IEEE half at buf[offset:offset + 2]."""
    h = f32_to_f16(value)
    buf[offset] = np.uint8(h & 0xFF)
    buf[offset + 1] = np.uint8(h >> 8)
