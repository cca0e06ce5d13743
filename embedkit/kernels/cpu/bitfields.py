"""Unpack small integer fields of quantized bytes straight to float32, in 32-bit integer lanes.

Numba widens every integer operation to 64 bits, which halves the SIMD width of the unpacking in the
matvec loops; these intrinsics keep the shifts and masks in i32 so LLVM vectorises 8 lanes per AVX2
register. Arguments may be any integer type (they are truncated or zero-extended to 32 bits).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I32 = ir.IntType(32)


def _i32(builder, value):
    width = value.type.width
    if width > 32:
        return builder.trunc(value, _I32)
    if width < 32:
        return builder.zext(value, _I32)
    return value


def _field(builder, value, shift, mask):
    return builder.and_(builder.lshr(_i32(builder, value), _i32(builder, shift)), _i32(builder, mask))


@intrinsic
def ubits_f32(typingctx, value, shift, mask):
    """float32(((value >> shift) & mask)) with value treated as an unsigned 32-bit integer."""
    if not all(isinstance(a, types.Integer) for a in (value, shift, mask)):
        return None

    def codegen(context, builder, signature, args):
        return builder.sitofp(_field(builder, *args), ir.FloatType())

    return types.float32(value, shift, mask), codegen


@intrinsic
def ubits2_f32(typingctx, a, a_shift, a_mask, b, b_shift, b_mask, b_pos):
    """float32(((a >> a_shift) & a_mask) | (((b >> b_shift) & b_mask) << b_pos)), unsigned 32-bit."""
    args_ = (a, a_shift, a_mask, b, b_shift, b_mask, b_pos)
    if not all(isinstance(t, types.Integer) for t in args_):
        return None

    def codegen(context, builder, signature, args):
        lo = _field(builder, args[0], args[1], args[2])
        hi = builder.shl(_field(builder, args[3], args[4], args[5]), _i32(builder, args[6]))
        return builder.sitofp(builder.or_(lo, hi), ir.FloatType())

    return types.float32(*args_), codegen
