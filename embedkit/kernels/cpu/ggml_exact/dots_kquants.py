"""ggml-exact block kernels of the K-quants: Q4_K, Q5_K and Q6_K super-blocks of 256 (x Q8_K activations).

As `dots_legacy`: one class per weight type and ggml kernel (vec_dot; the tiled K-quant matmul; the
repacked Q4_K gemv and gemm), each a block dot in ggml's x86 AVX2 operation order.
"""

from __future__ import annotations

from llvmlite import ir

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact.dots_legacy import block_bytes
from embedkit.kernels.cpu.ggml_exact.simd import (
    F32,
    I32,
    V4F32,
    V4I32,
    V8F32,
    V8I32,
    V16I8,
    V16I16,
    V32I8,
    broadcast,
    f16,
    fma,
    hsum4,
    hsum8,
    load,
    madd,
    maddubs,
    reduce_add,
    shuffle,
    splat,
)


def _k4_scales(builder, wb):
    """Q4_K's 6-bit scales and mins unpacked as ggml's utmp words: <16 x i16>, scales 0-7 then mins 0-7."""
    u0, u1, u2 = (load(builder, wb, 4 + 4 * i, I32) for i in range(3))

    def c(v):
        return ir.Constant(I32, v)

    def bits(v, shift, mask):
        return builder.and_(builder.lshr(v, c(shift)), c(mask))

    u3 = builder.or_(bits(u2, 4, 0x0F0F0F0F), builder.shl(bits(u1, 6, 0x03030303), c(4)))
    w1 = builder.or_(builder.and_(u2, c(0x0F0F0F0F)), builder.shl(bits(u0, 6, 0x03030303), c(4)))
    w2 = builder.and_(u1, c(0x3F3F3F3F))
    w0 = builder.and_(u0, c(0x3F3F3F3F))
    vec = ir.Constant(V4I32, ir.Undefined)
    for i, v in enumerate((w0, w1, w2, u3)):
        vec = builder.insert_element(vec, v, c(i))
    return builder.zext(builder.bitcast(vec, V16I8), V16I16)


def _k4_scales_mins(builder, wb):
    """Q4_K / Q5_K's sub-block scales, each splat to <16 x i16>, and mins as <8 x i16>."""
    sm = _k4_scales(builder, wb)
    return [shuffle(builder, sm, [i] * 16) for i in range(8)], shuffle(builder, sm, range(8, 16))


class BlockQ4_K:
    w_bytes, x_bytes = block_bytes(GGMLType.Q4_K)

    @staticmethod
    def init():
        return [ir.Constant(V8F32, [0.0] * 8), ir.Constant(V4F32, [0.0] * 4)]

    @staticmethod
    def decode(builder, wb):
        scales, mins = _k4_scales_mins(builder, wb)
        quants = []
        for j in range(4):
            q4 = load(builder, wb, 16 + 32 * j, V32I8)
            quants.append(builder.and_(q4, splat(V32I8, 15)))
            quants.append(builder.lshr(q4, splat(V32I8, 4)))
        return f16(builder, wb, 0), f16(builder, wb, 2), scales, mins, quants

    @staticmethod
    def ints(builder, dec, xb):
        """(8 int32 lanes of sum sc * q * x, 4 int32 lanes of sum min * bsum) of one super-block."""
        _, _, scales, mins, quants = dec
        bsums = load(builder, xb, 260, V16I16)
        q8s = builder.add(shuffle(builder, bsums, range(0, 16, 2)), shuffle(builder, bsums, range(1, 16, 2)))
        sumi = None
        for s in range(8):
            p = madd(builder, scales[s], maddubs(builder, quants[s], load(builder, xb, 4 + 32 * s, V32I8)))
            sumi = p if sumi is None else builder.add(sumi, p)
        return sumi, madd(builder, mins, q8s)

    @staticmethod
    def terms(builder, dec, xb):
        """(d, -dmin, sumi, prod) of one super-block: the float scales y.d * d and -y.d * dmin, and `ints`."""
        dw, dminw = dec[:2]
        yd = load(builder, xb, 0, F32)
        d = builder.fmul(yd, dw)
        dmin = builder.fmul(builder.fneg(yd), dminw)
        sumi, prod = BlockQ4_K.ints(builder, dec, xb)
        return d, dmin, sumi, prod

    @staticmethod
    def update(builder, dec, xb, acc):
        d, dmin, sumi, prod = BlockQ4_K.terms(builder, dec, xb)
        acc_m = fma(builder, broadcast(builder, dmin, V4F32), builder.sitofp(prod, V4F32), acc[1])
        acc_v = fma(builder, broadcast(builder, d, V8F32), builder.sitofp(sumi, V8F32), acc[0])
        return [acc_v, acc_m]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(hsum8(builder, acc[0]), hsum4(builder, acc[1]))


class BlockQ5_K(BlockQ4_K):
    w_bytes, x_bytes = block_bytes(GGMLType.Q5_K)

    @staticmethod
    def init():
        return [ir.Constant(V8F32, [0.0] * 8), ir.Constant(F32, 0.0)]

    @staticmethod
    def decode(builder, wb):
        scales, mins = _k4_scales_mins(builder, wb)
        qh = load(builder, wb, 16, V32I8)
        quants = []
        for j in range(4):
            q5 = load(builder, wb, 48 + 32 * j, V32I8)
            lows = (builder.and_(q5, splat(V32I8, 15)), builder.lshr(q5, splat(V32I8, 4)))
            for half, lo in enumerate(lows):  # the fifth bit of sub-block 2j + half is bit 2j + half of qh
                h = builder.and_(builder.lshr(qh, splat(V32I8, 2 * j + half)), splat(V32I8, 1))
                quants.append(builder.or_(lo, builder.shl(h, splat(V32I8, 4))))
        return f16(builder, wb, 0), f16(builder, wb, 2), scales, mins, quants

    @staticmethod
    def update(builder, dec, xb, acc):
        # as Q4_K's, except that the mins' integer dot is summed to one int32 and fused into a scalar
        d, dmin, sumi, prod = BlockQ4_K.terms(builder, dec, xb)
        summs = fma(builder, dmin, builder.sitofp(reduce_add(builder, prod), F32), acc[1])
        acc_v = fma(builder, broadcast(builder, d, V8F32), builder.sitofp(sumi, V8F32), acc[0])
        return [acc_v, summs]

    @staticmethod
    def finish(builder, acc):
        return builder.fadd(hsum8(builder, acc[0]), acc[1])


class BlockQ6_K:
    w_bytes, x_bytes = block_bytes(GGMLType.Q6_K)

    @staticmethod
    def init():
        return [ir.Constant(V8F32, [0.0] * 8)]

    @staticmethod
    def decode(builder, wb):
        sc16 = builder.sext(load(builder, wb, 192, V16I8), V16I16)
        quants, scales = [], []
        for j in range(2):
            b1 = load(builder, wb, 64 * j, V32I8)
            b2 = load(builder, wb, 64 * j + 32, V32I8)
            h = load(builder, wb, 128 + 32 * j, V32I8)

            def mask(v, m):
                return builder.and_(v, splat(V32I8, m))

            lo4 = [mask(b1, 15), mask(b2, 15), builder.lshr(b1, splat(V32I8, 4)), builder.lshr(b2, splat(V32I8, 4))]
            hi2 = [
                builder.shl(mask(h, 3), splat(V32I8, 4)),
                builder.shl(mask(h, 12), splat(V32I8, 2)),
                mask(h, 48),
                builder.lshr(mask(h, 192), splat(V32I8, 2)),
            ]
            for p in range(4):
                quants.append(builder.or_(lo4[p], hi2[p]))
                i = 4 * j + p
                scales.append(shuffle(builder, sc16, [2 * i] * 8 + [2 * i + 1] * 8))
        return f16(builder, wb, 208), sc16, quants, scales

    @staticmethod
    def ints(builder, dec, xb):
        """8 int32 lanes of sum sc * (q - 32) * x of one super-block."""
        _, sc16, quants, scales = dec
        bsums = load(builder, xb, 260, V16I16)
        offset = builder.shl(madd(builder, bsums, sc16), splat(V8I32, 5))
        sumi = None
        for s in range(8):
            p = madd(builder, scales[s], maddubs(builder, quants[s], load(builder, xb, 4 + 32 * s, V32I8)))
            sumi = p if sumi is None else builder.add(sumi, p)
        return builder.sub(sumi, offset)

    @staticmethod
    def update(builder, dec, xb, acc):
        d = builder.fmul(load(builder, xb, 0, F32), dec[0])
        sumi = BlockQ6_K.ints(builder, dec, xb)
        return [fma(builder, broadcast(builder, d, V8F32), builder.sitofp(sumi, V8F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return hsum8(builder, acc[0])


# ggml's tiled K-quant matmul (ggml-cpu/tiled, AVX2 microkernel) per output and super-block: the whole
# block's integer dot s1 (and Q4_K's sum of mins times bsums s2) as one int32, res = d_w * float(s1)
# (Q4_K: res = fnmadd(dmin_w, float(s2), res)), then acc = fma(res, d_x, acc), blocks in order from zero.


class BlockQ4_KTiled(BlockQ4_K):
    @staticmethod
    def init():
        return [ir.Constant(F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw = dec[:2]
        sumi, prod = BlockQ4_K.ints(builder, dec, xb)
        res = builder.fmul(dw, builder.sitofp(reduce_add(builder, sumi), F32))
        res = fma(builder, builder.fneg(dminw), builder.sitofp(reduce_add(builder, prod), F32), res)
        return [fma(builder, res, load(builder, xb, 0, F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]


class BlockQ5_KTiled(BlockQ5_K):
    # ggml runs Q5_K through the same tiled microkernel as Q4_K (5-bit codes in the same byte lanes)
    init = staticmethod(BlockQ4_KTiled.init)
    update = staticmethod(BlockQ4_KTiled.update)
    finish = staticmethod(BlockQ4_KTiled.finish)


# ggml's repacked Q4_K kernels (q4_K_8x8_q8_K, arch/x86/repack.cpp) per output keep two float accumulators fed
# by fused multiply-adds of exact integer sums, acc with d_w * d_x and acc_min with dmin_w * d_x; the result is
# acc - acc_min. The gemv (activation rows left over after groups of 4) adds once per super-block, the gemm
# (groups of 4 rows) once per pair of 32-element sub-blocks. The interleaved layout only decides which SIMD
# lane holds which output, so these read the plain GGUF layout.


class BlockQ4_KGemv(BlockQ4_K):
    @staticmethod
    def init():
        return [ir.Constant(F32, 0.0), ir.Constant(F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw = dec[:2]
        yd = load(builder, xb, 0, F32)
        sumi, prod = BlockQ4_K.ints(builder, dec, xb)
        a = fma(builder, builder.sitofp(reduce_add(builder, sumi), F32), builder.fmul(dw, yd), acc[0])
        a_min = fma(builder, builder.sitofp(reduce_add(builder, prod), F32), builder.fmul(dminw, yd), acc[1])
        return [a, a_min]

    @staticmethod
    def finish(builder, acc):
        return builder.fsub(acc[0], acc[1])


class BlockQ4_KGemm(BlockQ4_KGemv):
    @staticmethod
    def update(builder, dec, xb, acc):
        dw, dminw, scales, mins, quants = dec
        yd = load(builder, xb, 0, F32)
        d, dmin = builder.fmul(dw, yd), builder.fmul(dminw, yd)
        bsums = load(builder, xb, 260, V16I16)
        q8s = builder.add(shuffle(builder, bsums, range(0, 16, 2)), shuffle(builder, bsums, range(1, 16, 2)))
        pair_mins = madd(builder, mins, q8s)  # lane p: min[2p] * bsum[2p] + min[2p+1] * bsum[2p+1]
        a, a_min = acc
        for p in range(4):
            dots = [
                madd(builder, scales[s], maddubs(builder, quants[s], load(builder, xb, 4 + 32 * s, V32I8)))
                for s in (2 * p, 2 * p + 1)
            ]
            isum = reduce_add(builder, builder.add(dots[0], dots[1]))
            imin = builder.extract_element(pair_mins, ir.Constant(I32, p))
            a = fma(builder, builder.sitofp(isum, F32), d, a)
            a_min = fma(builder, builder.sitofp(imin, F32), dmin, a_min)
        return [a, a_min]


class BlockQ6_KTiled(BlockQ6_K):
    @staticmethod
    def init():
        return [ir.Constant(F32, 0.0)]

    @staticmethod
    def update(builder, dec, xb, acc):
        res = builder.fmul(dec[0], builder.sitofp(reduce_add(builder, BlockQ6_K.ints(builder, dec, xb)), F32))
        return [fma(builder, res, load(builder, xb, 0, F32), acc[0])]

    @staticmethod
    def finish(builder, acc):
        return acc[0]
