"""32-lane integer dot products on raw bytes, emitted as LLVM vector IR (portable; on AVX2 the backend
turns the widened multiply-add into `vpmaddwd`), for the matvec kernels with int8 activations.

Numba's own integer arithmetic widens to 64 bits and defeats these instruction patterns; here the
whole 32-byte block is one vector load, a widening multiply and one `llvm.vector.reduce.add`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_V32I8 = ir.VectorType(_I8, 32)
_V32I32 = ir.VectorType(_I32, 32)


def _load32(context, builder, aryty, ary, offset):
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [offset])
    return builder.load(builder.bitcast(ptr, _V32I8.as_pointer()), align=1)


def _reduce_add(builder, vec):
    fnty = ir.FunctionType(_I32, [_V32I32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.vector.reduce.add.v32i32")
    return builder.call(fn, [vec])


def _splat8(value):
    return ir.Constant(_V32I8, [value] * 32)


@intrinsic
def dot_s8s8(typingctx, a, a_off, b, b_off):
    """sum_{i<32} int8(a[a_off + i]) * int8(b[b_off + i]) as int32 (a, b: 1-D int8 or uint8 arrays)."""
    if not (isinstance(a, types.Array) and isinstance(b, types.Array)):
        return None

    def codegen(context, builder, signature, args):
        va = _load32(context, builder, signature.args[0], args[0], args[1])
        vb = _load32(context, builder, signature.args[2], args[2], args[3])
        prod = builder.mul(builder.sext(va, _V32I32), builder.sext(vb, _V32I32))
        return _reduce_add(builder, prod)

    return types.int32(a, a_off, b, b_off), codegen


@intrinsic
def dot_u4s8(typingctx, a, a_off, shift, b, b_off):
    """sum_{i<32} ((a[a_off + i] >> shift) & 15) * int8(b[b_off + i]) as int32 (nibbles times int8)."""
    if not (isinstance(a, types.Array) and isinstance(b, types.Array) and isinstance(shift, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        va = _load32(context, builder, signature.args[0], args[0], args[1])
        sh = builder.trunc(args[2], _I8) if args[2].type.width > 8 else args[2]
        sh_vec = builder.insert_element(ir.Constant(_V32I8, ir.Undefined), sh, ir.Constant(_I32, 0))
        sh_vec = builder.shuffle_vector(sh_vec, sh_vec, ir.Constant(ir.VectorType(_I32, 32), [0] * 32))
        nib = builder.and_(builder.lshr(va, sh_vec), _splat8(15))
        vb = _load32(context, builder, signature.args[3], args[3], args[4])
        prod = builder.mul(builder.zext(nib, _V32I32), builder.sext(vb, _V32I32))
        return _reduce_add(builder, prod)

    return types.int32(a, a_off, shift, b, b_off), codegen
