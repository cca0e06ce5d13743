"""Warp-level helpers and PTX intrinsics numba-cuda lacks (dp4a, float16 bit conversions), with twins for
the CUDA simulator.

The simulator has no warp shuffles: there `warp_sum`/`warp_max` go through shared memory and
`syncthreads`, so every thread of the block must call them (kernels never return early before one).
Blocks are one-dimensional.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types
from numba.cuda import config


def _sbyte(v: int, k: int) -> int:
    b = (int(v) >> (8 * k)) & 0xFF
    return b - 256 if b >= 128 else b


if config.ENABLE_CUDASIM:

    @cuda.jit(device=True)
    def warp_sum(v):
        """Sum of `v` over the 32 lanes of the warp, returned to every lane."""
        buf = cuda.shared.array(1024, dtype=np.float64)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()
        base = tid - tid % 32
        s = np.float32(buf[base : base + 32].sum())
        cuda.syncthreads()
        return s

    @cuda.jit(device=True)
    def warp_max(v):
        """Max of `v` over the 32 lanes of the warp, returned to every lane."""
        buf = cuda.shared.array(1024, dtype=np.float64)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()
        base = tid - tid % 32
        s = np.float32(buf[base : base + 32].max())
        cuda.syncthreads()
        return s

    def dp4a(a, b, c):
        """Sum of the four signed byte products of `a` and `b`, plus `c` (PTX dp4a.s32.s32)."""
        return int(c) + sum(_sbyte(a, k) * _sbyte(b, k) for k in range(4))

    def half_bits_to_f32(u):
        """The float16 whose bits are the low 16 of `u`, as float32 (PTX cvt.f32.f16)."""
        return np.float32(np.array(int(u) & 0xFFFF, dtype=np.uint16).view(np.float16))

    def f32_to_half_bits(v):
        """The bits of `v` rounded to float16 (round to nearest even), as uint32 (PTX cvt.rn.f16.f32)."""
        return np.uint32(np.array(v, dtype=np.float32).astype(np.float16).view(np.uint16))

else:
    from llvmlite import ir

    # written out rather than looped over a tuple of offsets, so no loop or tuple indexing is left
    @cuda.jit(device=True, inline=True)
    def warp_sum(v):
        """Sum of `v` over the 32 lanes of the warp, returned to every lane."""
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 16)
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 8)
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 4)
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 2)
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 1)
        return v

    @cuda.jit(device=True, inline=True)
    def warp_max(v):
        """Max of `v` over the 32 lanes of the warp, returned to every lane."""
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 16))
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 8))
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 4))
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 2))
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 1))
        return v

    from numba.cuda.extending import intrinsic

    @intrinsic
    def dp4a(typingctx, a, b, c):
        """Sum of the four signed byte products of `a` and `b`, plus `c` (PTX dp4a.s32.s32)."""
        sig = types.int32(a, b, c)

        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            vals = [context.cast(builder, v, t, types.int32) for v, t in zip(args, sig.args, strict=True)]
            fnty = ir.FunctionType(i32, [i32, i32, i32])
            asm = ir.InlineAsm(fnty, "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r")
            return builder.call(asm, vals)

        return sig, codegen

    @intrinsic
    def half_bits_to_f32(typingctx, u):
        """The float16 whose bits are the low 16 of `u`, as float32 (PTX cvt.f32.f16)."""
        sig = types.float32(u)

        def codegen(context, builder, sig, args):
            val = context.cast(builder, args[0], sig.args[0], types.uint32)
            fnty = ir.FunctionType(ir.FloatType(), [ir.IntType(32)])
            asm = ir.InlineAsm(fnty, "{ .reg .b16 h; cvt.u16.u32 h, $1; cvt.f32.f16 $0, h; }", "=f,r")
            return builder.call(asm, [val])

        return sig, codegen

    @intrinsic
    def f32_to_half_bits(typingctx, v):
        """The bits of `v` rounded to float16 (round to nearest even), as uint32 (PTX cvt.rn.f16.f32)."""
        sig = types.uint32(v)

        def codegen(context, builder, sig, args):
            val = context.cast(builder, args[0], sig.args[0], types.float32)
            fnty = ir.FunctionType(ir.IntType(32), [ir.FloatType()])
            asm = ir.InlineAsm(fnty, "{ .reg .b16 h; cvt.rn.f16.f32 h, $1; cvt.u32.u16 $0, h; }", "=r,f")
            return builder.call(asm, [val])

        return sig, codegen


_HIGH_HALF = np.uint64(32)


@cuda.jit(device=True, inline=True)
def dot8(wv, xv, acc):
    """acc + the sum of the eight signed byte products of two uint64 words (two dp4a)."""
    return dp4a(wv >> _HIGH_HALF, xv >> _HIGH_HALF, dp4a(wv, xv, acc))


@cuda.jit(device=True, inline=True)
def q8_lane(v):
    """(int8 quant, block scale) of `v` for a warp holding one block of 32 activations, lane j value j
    (lanes past the end pass 0): llama.cpp's symmetric rounding, d = max|v| / 127, q = round(v / d).
    Every lane of the warp must call it (a warp reduction)."""
    amax = warp_max(abs(v))
    dd = amax / np.float32(127.0)
    qinv = np.float32(0.0) if dd == 0 else np.float32(1.0) / dd
    return np.int8(round(v * qinv)), dd


@cuda.jit(device=True, inline=True)
def warp_rows(rows_per_warp, y):
    """(lane, first output row, token, number of rows) of a warp computing rows_per_warp consecutive rows
    of y[token, :] (warps of a block side by side along the rows, the grid's y axis over the tokens)."""
    warp = cuda.blockIdx.x * (cuda.blockDim.x // 32) + cuda.threadIdx.x // 32
    return cuda.threadIdx.x % 32, warp * rows_per_warp, cuda.blockIdx.y, y.shape[1]


@cuda.jit(device=True, inline=True)
def start_warp_rows(acc, rr, r0, rows):
    """Zero a warp's row sums acc[i] and set rr[i] to the row each reads: r0 + i, rows past the end
    repeating the last row (computed, never written), so every lane runs the same loop."""
    for i in range(acc.shape[0]):
        acc[i] = np.float32(0.0)
        rr[i] = min(r0 + i, rows - 1)


@cuda.jit(device=True, inline=True)
def store_warp_rows(acc, r0, rows, lane, t, has_bias, bias, y):
    """Reduce each row's lane sums acc[i] over the warp and write y[t, r0 + i] (+ bias) for rows that
    exist (a warp computing acc.shape[0] consecutive output rows of a matvec)."""
    for i in range(acc.shape[0]):
        v = warp_sum(acc[i])
        r = r0 + i
        if lane == 0 and r < rows:
            if has_bias:
                v += bias[r]
            y[t, r] = v


@cuda.jit(device=True, inline=True)
def u16_pair(h, r, k):
    """Two consecutive uint16 of row r (h[r, k], h[r, k + 1]) as one uint32, little-endian: a 32-bit word
    of quant bytes that are only 2-byte aligned."""
    return np.uint32(h[r, k]) | (np.uint32(h[r, k + 1]) << np.uint32(16))
