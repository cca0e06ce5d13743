"""Scalar float32 primitives with C semantics that Numba does not expose: fused multiply-add.

`fma32(a, b, c)` is one rounding of a*b + c (LLVM `llvm.fma.f32`, the `vfmadd` instruction on
x86 with FMA), as `_mm256_fmadd_ps` and the contractions GCC makes in ggml's C++ files compute.
Plain `a * b + c` in Numba is two roundings (Numba never contracts without fastmath).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c in float32 with a single rounding."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vals = [context.cast(builder, v, t, types.float32) for v, t in zip(args, signature.args, strict=True)]
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, vals)

    return types.float32(a, b, c), codegen
