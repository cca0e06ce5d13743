"""ggml's float16 x float16 dot products on AVX2 (the K.Q and P.V products of llama.cpp's attention).

Both operands are IEEE halves widened to float32, so every product is exact and only the order in
which the products are summed decides the bits. ggml has two orders:

- `tinyblas_dot`: llamafile's tinyBLAS<8, __m256, ..., ggml_fp16_t>, used by ggml_mul_mat when the
  right-hand side has at least 2 rows, k % 8 == 0 and the left-hand side has m % 4 == 0 rows. Each
  output owns one 8-lane accumulator (lane l sums elements l, l+8, l+16, ... by FMA, in order),
  whatever the tile shape, and `hsum` folds the lanes as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
- `vec_dot_f16`: ggml_vec_dot_f16, used otherwise (a single query row): four 8-lane accumulators
  take the 32-element steps in turn, are added pairwise (s0+s2, s1+s3, then together), the lanes
  folded as ((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7)), and the n % 32 leftover products are added one
  by one in double precision; the result is rounded to float32.

`x` holds IEEE half bits (uint16, as the F16 KV cache) and `y` float32 values that are already
float16-exact (the rounded query or probabilities); both are flat C-contiguous arrays addressed by
offsets. The eight lanes run as one LLVM <8 x float> FMA chain, the instruction ggml itself executes.
`lo`/`hi` restrict the work to a block range when the caller knows that all products outside it are
zero (masked attention probabilities), which leaves the bits unchanged: an accumulator that starts
at +0 can never become -0, and adding +-0 to anything else is exact.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.kernels.cpu.halfbits import f16_to_f32, f32_to_f16

_V8F = ir.VectorType(ir.FloatType(), 8)
_V8H = ir.VectorType(ir.HalfType(), 8)
_V8I16 = ir.VectorType(ir.IntType(16), 8)


def _flat(t, dtypes) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype in dtypes


def _fma_chains(context, builder, signature, args, n_rows):
    """IR of `n_rows` 8-lane FMA chains over x rows xo + r*xstride against one y (see _lanes8 / _lanes8x4)."""
    xs = context.make_array(signature.args[0])(context, builder, args[0])
    ys = context.make_array(signature.args[3])(context, builder, args[3])
    xo, xstride, yo, lo, hi, st = (
        context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 4, 5, 6, 7)
    )
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F] * 3), "llvm.fma.v8f32")
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8)) for _ in range(n_rows)]
    row_starts = [builder.add(xo, builder.mul(xstride, ir.Constant(xo.type, r))) for r in range(n_rows)]
    with cgutils.for_range_slice(builder, lo, hi, st, lo.type) as (b, _):
        py = builder.bitcast(builder.gep(ys.data, [builder.add(yo, b)]), _V8F.as_pointer())
        yv = builder.load(py, align=4)
        for acc, start in zip(accs, row_starts, strict=True):
            px = builder.bitcast(builder.gep(xs.data, [builder.add(start, b)]), _V8I16.as_pointer())
            xv = builder.fpext(builder.bitcast(builder.load(px, align=2), _V8H), _V8F)
            builder.store(builder.call(fma, [xv, yv, builder.load(acc)]), acc)
    lanes = []
    for acc in accs:
        v = builder.load(acc)
        lanes += [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in range(8)]
    return context.make_tuple(builder, signature.return_type, lanes)


def _chain_args_ok(x, y, ints) -> bool:
    return (
        _flat(x, (types.uint16, types.int16))
        and _flat(y, (types.float32,))
        and all(isinstance(t, types.Integer) for t in ints)
    )


@intrinsic
def _lanes8(typingctx, x, xo, xstride, y, yo, start, stop, step):
    """Eight FMA chains: lane l accumulates half(x[xo+b+l]) * y[yo+b+l] for b = start, start+step, ... < stop."""
    if not _chain_args_ok(x, y, (xo, xstride, yo, start, stop, step)):
        return None
    sig = types.UniTuple(types.float32, 8)(x, xo, xstride, y, yo, start, stop, step)
    return sig, lambda context, builder, signature, args: _fma_chains(context, builder, signature, args, 1)


@intrinsic
def _lanes8x4(typingctx, x, xo, xstride, y, yo, start, stop, step):
    """_lanes8 for the four x rows starting at xo, xo + xstride, ... (interleaved chains): 4 x 8 lanes."""
    if not _chain_args_ok(x, y, (xo, xstride, yo, start, stop, step)):
        return None
    sig = types.UniTuple(types.float32, 32)(x, xo, xstride, y, yo, start, stop, step)
    return sig, lambda context, builder, signature, args: _fma_chains(context, builder, signature, args, 4)


@njit(cache=True, inline="always")
def hsum8_tinyblas(a0, a1, a2, a3, a4, a5, a6, a7):
    """tinyBLAS's hsum(__m256) (also ggml_vec_soft_max_f32's block sum): high+low halves, movehl, movehdup."""
    t0 = a4 + a0
    t1 = a5 + a1
    t2 = a6 + a2
    t3 = a7 + a3
    return (t0 + t2) + (t1 + t3)


@njit(cache=True)
def tinyblas_dot(x, xo, y, yo, lo, hi):
    """One tinyBLAS output: sum of x[xo+i] * y[yo+i] for i in [lo, hi), lo and hi multiples of 8.

    The full product is lo = 0, hi = k; a narrower range is only valid when the skipped products are
    zero (see the module docstring).
    """
    a0, a1, a2, a3, a4, a5, a6, a7 = _lanes8(x, xo, 0, y, yo, lo, hi, 8)
    return hsum8_tinyblas(a0, a1, a2, a3, a4, a5, a6, a7)


@njit(cache=True)
def tinyblas_dot4(x, xo, xstride, y, yo, lo, hi):
    """`tinyblas_dot` of the four x rows at xo + r * xstride (r < 4) with the same y, computed together."""
    c = _lanes8x4(x, xo, xstride, y, yo, lo, hi, 8)
    return (
        hsum8_tinyblas(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]),
        hsum8_tinyblas(c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]),
        hsum8_tinyblas(c[16], c[17], c[18], c[19], c[20], c[21], c[22], c[23]),
        hsum8_tinyblas(c[24], c[25], c[26], c[27], c[28], c[29], c[30], c[31]),
    )


@njit(cache=True)
def vec_dot_f16(x, xo, y, yo, n, lo, hi):
    """ggml_vec_dot_f16 of x[xo:xo+n] and y[yo:yo+n] as float32.

    The 32-element steps in [lo, hi) (multiples of 32 within n & ~31) are summed; steps outside are
    taken as zero products. The n % 32 leftovers are always added (in double).
    """
    s00, s01, s02, s03, s04, s05, s06, s07 = _lanes8(x, xo, 0, y, yo, lo, hi, 32)
    s10, s11, s12, s13, s14, s15, s16, s17 = _lanes8(x, xo + 8, 0, y, yo + 8, lo, hi, 32)
    s20, s21, s22, s23, s24, s25, s26, s27 = _lanes8(x, xo + 16, 0, y, yo + 16, lo, hi, 32)
    s30, s31, s32, s33, s34, s35, s36, s37 = _lanes8(x, xo + 24, 0, y, yo + 24, lo, hi, 32)
    # sum[0] += sum[2]; sum[1] += sum[3]; sum[0] += sum[1]
    r0 = (s00 + s20) + (s10 + s30)
    r1 = (s01 + s21) + (s11 + s31)
    r2 = (s02 + s22) + (s12 + s32)
    r3 = (s03 + s23) + (s13 + s33)
    r4 = (s04 + s24) + (s14 + s34)
    r5 = (s05 + s25) + (s15 + s35)
    r6 = (s06 + s26) + (s16 + s36)
    r7 = (s07 + s27) + (s17 + s37)
    # low + high 128-bit halves, then two horizontal adds
    t0 = r0 + r4
    t1 = r1 + r5
    t2 = r2 + r6
    t3 = r3 + r7
    total = np.float64((t0 + t1) + (t2 + t3))
    for i in range(n & ~31, n):
        total += np.float64(f16_to_f32(x[xo + i]) * y[yo + i])
    return np.float32(total)


@njit(cache=True)
def uses_tinyblas(m: int, n: int, k: int) -> bool:
    """Whether ggml_mul_mat (F16 weights, >= 1 right-hand rows) takes llamafile's tinyBLAS path on AVX2."""
    return n >= 2 and k % 8 == 0 and m % 4 == 0


@njit(cache=True)
def round_f16(x):
    """float32 values of x rounded to IEEE half (round to nearest even, as ggml_cpu_fp32_to_fp16)."""
    out = np.empty(x.shape, dtype=np.float32)
    flat_in = x.ravel()
    flat_out = out.ravel()
    for i in range(flat_in.size):
        flat_out[i] = f16_to_f32(f32_to_f16(flat_in[i]))
    return out


@njit(cache=True, parallel=True)
def mul_mat_f16(a, b):
    """ggml_mul_mat(a, b) for an F16 `a` (uint16 bits [m, k]) and F32 `b` ([n, k]) -> float32 [n, m].

    b is rounded to float16 first, as ggml does (vec_dot_type of F16 is F16); the product order is
    tinyBLAS's or ggml_vec_dot_f16's by the same rule as ggml (`uses_tinyblas`).
    """
    m, k = a.shape
    n = b.shape[0]
    bh = round_f16(b)
    out = np.empty((n, m), dtype=np.float32)
    tiny = uses_tinyblas(m, n, k)
    af = a.ravel()
    bf = bh.ravel()
    for j in prange(n):
        for i in range(m):
            if tiny:
                out[j, i] = tinyblas_dot(af, i * k, bf, j * k, 0, k)
            else:
                out[j, i] = vec_dot_f16(af, i * k, bf, j * k, k, 0, k & ~31)
    return out
