"""`y = x @ W.T` for a few activation rows (a continuous-batching decode step) with int16 activations: each weight
block is read and decoded once and multiplied with every activation row (registry path `cpu.int16`, several rows).

The arithmetic of each (weight row, activation row) pair is that of the single-row decode kernels
(`matvec_int8`, block dots in `int8dot`) operation for operation: the same integer block dot (exact), the same
float32 scale products, multiply-adds into the same 8-lane accumulators in the same order, the same horizontal
sum. A sequence's logits therefore do not depend on the batch it runs in: bit-identical to its solo decode
(tests/test_kernels_multirow_int16.py).

One intrinsic `dot_rows(w, r, xq, xd, xsum, y, i0, kind, group)` computes weight row r against the `group`
activation rows i0 .. i0 + group - 1 (clamped to the last row: a clamped row recomputes the last row's value and
stores the same bits) for the quant type `kind` (an index into KINDS); `int16_rows_kernel(<type>)` makes the
cached parallel kernel of a type over all rows. Activations: each row quantized by
`matvec_int8.quantize_activations16`, in `pair_layout`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.kernels.cpu.int8dot import (
    _F32,
    _I16,
    _I32,
    _V8F32,
    _V8I32,
    _V16I8,
    _V16I16,
    _V16I32,
    _V32I16,
    _decode_q4_0,
    _decode_q4_1,
    _decode_q5_0,
    _decode_q5_1,
    _decode_q8_0,
    _f16,
    _hsum,
    _intrinsic_fn,
    _load,
    _pairs_i32x8,
    _q6_k_quants,
    _scale_min_k4_vec,
    _widen16,
)
from embedkit.kernels.cpu.isa import HAS_AVX512, HAS_AVX512_VNNI, prefetch_ahead
from embedkit.kernels.cpu.matvec_int8 import quantize_activations16
from embedkit.kernels.cpu.threads import get_num_threads

# the `kernel_suffix` of each type, in the order of their `kind` index
KINDS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k")
_LEGACY = {
    "q8_0": (34, _decode_q8_0),
    "q4_0": (18, _decode_q4_0),
    "q4_1": (20, _decode_q4_1),
    "q5_0": (22, _decode_q5_0),
    "q5_1": (24, _decode_q5_1),
}
GROUPS = (2, 4, 8)  # activation rows of a call (`pair_layout`)
CHUNK_ROWS = 16  # weight rows per prange chunk
# Activation bytes a slice of columns may span (`_rows_sliced`): most of the 48 KiB L1 data cache, with room for
# the weight rows streaming through and the chunk's carried sums.
SLICE_BYTES = 24 << 10
STATE_FLOATS = 4 * 2 * 16 + 16  # carried sums of a weight row: 2 accumulators per pair of 8 rows, the min terms
_V16F32 = ir.VectorType(_F32, 16)


def _splat(builder, v, n):
    """<n x float> of the scalar v in every lane."""
    ty = ir.VectorType(_F32, n)
    sv = builder.insert_element(ir.Constant(ty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(sv, sv, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _pairs_i32x16(builder, a, b):
    """<32 x i16> a, b -> <16 x i32> with lane j = a[2j] b[2j] + a[2j+1] b[2j+1] (one 512-bit vpmaddwd)."""
    if HAS_AVX512:
        return builder.call(_intrinsic_fn(builder, "llvm.x86.avx512.pmaddw.d.512", _V16I32, [_V32I16] * 2), [a, b])
    halves = []
    for h in range(2):
        idx = ir.Constant(_V16I32, list(range(16 * h, 16 * h + 16)))
        halves.append(_pairs_i32x8(builder, builder.shuffle_vector(a, a, idx), builder.shuffle_vector(b, b, idx)))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_V16I32, list(range(16))))


def _dup(builder, v16):
    """<16 x i16> v -> <32 x i16> [v, v] (the same weights against two activation rows)."""
    return builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))


def _dup_bytes16(builder, blk, off):
    """<32 x i16>: the 16 signed bytes at blk + off, sign-extended, twice: a 128-bit broadcast load (no vector ALU
    uop) and one vpmovsxbw, where widening 32 loaded bytes and duplicating each half took two more shuffles."""
    v = _load(builder, blk, ir.Constant(_I32, off), _V16I8)
    both = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))
    return builder.sext(both, _V32I16)


def _q5_0_dup(builder, blk):
    """(<32 x i16> of weights 0-15 twice, of weights 16-31 twice) of a Q5_0 block, decoded in 16-bit lanes: the
    nibbles from one broadcast load (low nibbles: weights 0-15, high: 16-31), minus 16 where the fifth bit (from
    the 32-bit plane, each half's 16 bits repeated for the two copies) is clear."""
    v = _load(builder, blk, ir.Constant(_I32, 6), _V16I8)
    z = builder.zext(builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2)), _V32I16)
    qh = _load(builder, blk, ir.Constant(_I32, 2), _I32)
    out = []
    for h in range(2):
        nib = (
            builder.and_(z, ir.Constant(_V32I16, [15] * 32))
            if h == 0
            else builder.lshr(z, ir.Constant(_V32I16, [4] * 32))
        )
        bits = builder.and_(builder.lshr(qh, ir.Constant(_I32, 16 * h)), ir.Constant(_I32, 0xFFFF))
        bits = builder.mul(bits, ir.Constant(_I32, 0x10001))  # the 16 bits in both halves of the mask
        mask = builder.bitcast(bits, ir.VectorType(ir.IntType(1), 32))
        out.append(builder.select(mask, nib, builder.sub(nib, ir.Constant(_V32I16, [16] * 32))))
    return out[0], out[1]


class _Acts:
    """The activation rows of a call in their pair layout (`pair_layout`): the xq, xd (per pair) and xsum
    (transposed) pointers, the row count (2 * pairs) and the index type."""

    def __init__(self, xq, xd, xs, n, intp):
        self.xq, self.xd, self.xs, self.n, self.intp = xq, xd, xs, n, intp
        self.vec = ir.VectorType(_F32, n)

    def scales(self, builder, ptr, g):
        """<n x float>: the n rows' values of group g of the transposed scales at ptr."""
        p = builder.gep(ptr, [builder.mul(g, ir.Constant(self.intp, self.n))])
        return builder.load(builder.bitcast(p, self.vec.as_pointer()), align=4)

    def pair_scales(self, builder, g, p):
        """<16 x float>: group g's scale of row 2p in lanes 0-7, of row 2p + 1 in lanes 8-15 (xd's pair layout)."""
        k = builder.add(builder.mul(g, ir.Constant(self.intp, self.n // 2)), ir.Constant(self.intp, p))
        ptr = builder.gep(self.xd, [builder.mul(k, ir.Constant(self.intp, 16))])
        return builder.load(builder.bitcast(ptr, _V16F32.as_pointer()), align=4)

    def pair(self, builder, g, p, h):
        """<32 x i16>: elements 16h .. 16h + 15 of group g of rows 2p and 2p + 1."""
        k = builder.add(builder.mul(g, ir.Constant(self.intp, self.n // 2)), ir.Constant(self.intp, p))
        off = builder.mul(builder.add(builder.mul(k, ir.Constant(self.intp, 2)), ir.Constant(self.intp, h)),
                          ir.Constant(self.intp, 32))  # fmt: skip
        return builder.load(builder.bitcast(builder.gep(self.xq, [off]), _V32I16.as_pointer()), align=2)

    def pair_dot(self, builder, g, p, qlo2, qhi2):
        """<16 x i32>: lanes 0-7 the 8 partial sums of group g of row 2p against the duplicated weights, lanes
        8-15 those of row 2p + 1 (the single-row kernels' lo + hi vpmaddwd sums, lane for lane)."""
        lo = _pairs_i32x16(builder, qlo2, self.pair(builder, g, p, 0))
        if HAS_AVX512_VNNI:
            return _dpwssd(builder, lo, qhi2, self.pair(builder, g, p, 1))
        return builder.add(lo, _pairs_i32x16(builder, qhi2, self.pair(builder, g, p, 1)))


def _dpwssd(builder, acc, a, b):
    """acc + (the <16 x i32> pair sums of a * b): one vpdpwssd. Written as inline assembly: LLVM splits its
    intrinsic into vpmaddwd + vpaddd for CPUs it does not tune as "fast-dpwssd" (the Xeons here among them), one
    more uop on the two vector ports that a several-row step is bound by. The sums are integers: exact either way."""
    llvm.initialize_native_asmparser()  # Numba's object emitter needs it for inline assembly (idempotent)
    ty = ir.FunctionType(_V16I32, [_V16I32, _V32I16, _V32I16])
    return builder.asm(ty, "vpdpwssd $3, $2, $0", "=v,0,v,v", [acc, a, b], side_effect=False, name="dpwssd")


def _fmuladd_into(builder, acc, dot, sv):
    fmuladd = _intrinsic_fn(builder, "llvm.fmuladd.v16f32", _V16F32, [_V16F32] * 3)
    builder.store(builder.call(fmuladd, [builder.sitofp(dot, _V16F32), sv, builder.load(acc)]), acc)


def _accumulate(builder, acts, st, slot, g, qlo2, qhi2, scale):
    """Group g of every pair of rows against the duplicated weights, into accumulator `slot` of each pair, scaled
    by the weights' float `scale` times each row's activation scale (one multiply of xd's pair vector, where a
    vector of all rows' products and a permute per pair cost one more uop on the vector ports)."""
    s16 = _splat(builder, scale, 16)
    for p in range(acts.n // 2):
        sv = builder.fmul(s16, acts.pair_scales(builder, g, p))
        _fmuladd_into(builder, st.accs[p][slot], acts.pair_dot(builder, g, p, qlo2, qhi2), sv)


def _vfma(builder, a, b, c):
    """a * b + c rounded once, lane by lane (`int8dot._fma` per lane)."""
    return builder.call(_intrinsic_fn(builder, f"llvm.fma.v{a.type.count}f32", a.type, [a.type] * 3), [a, b, c])


class _State:
    """Accumulators of a call: `n_acc` <16 x float> per pair of rows, a <rows x float> min-term sum."""

    def __init__(self, builder, acts, n_acc, has_min):
        zero16 = ir.Constant(_V16F32, [0.0] * 16)
        self.accs = [[cgutils.alloca_once_value(builder, zero16) for _ in range(n_acc)] for _ in range(acts.n // 2)]
        self.mins = cgutils.alloca_once_value(builder, ir.Constant(acts.vec, [0.0] * acts.n)) if has_min else None


def _legacy_block(builder, blk, b, acts, st, decode):
    """One 32-element block against every row: `int8dot._make_dot4`'s int16 path."""
    prefetch_ahead(builder, blk)
    q, d, m = decode(builder, blk)
    if decode is _decode_q8_0:
        qlo, qhi = (_dup_bytes16(builder, blk, off) for off in (2, 18))
    elif decode is _decode_q5_0:
        qlo, qhi = _q5_0_dup(builder, blk)
    else:
        qlo, qhi = (_dup(builder, v) for v in _widen16(builder, q, signed=m is None))
    _accumulate(builder, acts, st, 0, b, qlo, qhi, d)  # d * xd per row
    if m is not None:
        xs = acts.scales(builder, acts.xs, b)
        # m * xs + mins rounded once: what `dot4_q4_1`'s multiply and add compile to (fastmath contracts them;
        # `q4_1_packed` writes the same fma)
        builder.store(_vfma(builder, _splat(builder, m, acts.n), xs, builder.load(st.mins)), st.mins)


def _row_sums(builder, acc):
    """(sum of lanes 0-7, sum of lanes 8-15) of a pair's accumulator (`int8dot._hsum` of each row's 8 lanes)."""
    lo = builder.shuffle_vector(acc, acc, ir.Constant(_V8I32, list(range(8))))
    hi = builder.shuffle_vector(acc, acc, ir.Constant(_V8I32, list(range(8, 16))))
    return _hsum(builder, lo), _hsum(builder, hi)


def _legacy_finish(builder, st, p):
    v = _row_sums(builder, builder.load(st.accs[p][0]))
    if st.mins is None:
        return v
    mins = builder.load(st.mins)
    return tuple(builder.fadd(v[r], builder.extract_element(mins, ir.Constant(_I32, 2 * p + r))) for r in range(2))


def _q4_k_block(builder, blk, b, acts, st):
    """One super-block against every row: `int8dot._q4_k_row_x16`."""
    intp = acts.intp
    for off in range(0, 144, 64):
        prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
    d = _f16(builder, blk, 0)
    dmin = _f16(builder, blk, 2)
    sc, mv = _scale_min_k4_vec(builder, blk)
    g0 = builder.mul(b, ir.Constant(intp, 8))
    fence = _intrinsic_fn(builder, "llvm.arithmetic.fence.v8f32", _V8F32, [_V8F32])
    dsc = builder.call(fence, [builder.fmul(_splat(builder, d, 8), sc)])
    msum = None
    for j in range(4):
        halves = [
            builder.zext(_load(builder, blk, ir.Constant(_I32, 16 + 32 * j + 16 * h), _V16I8), _V16I16)
            for h in range(2)
        ]
        for half in range(2):
            s = 2 * j + half
            if half:
                q = [_dup(builder, builder.lshr(v, ir.Constant(_V16I16, [4] * 16))) for v in halves]
            else:
                q = [_dup(builder, builder.and_(v, ir.Constant(_V16I16, [15] * 16))) for v in halves]
            g = builder.add(g0, ir.Constant(intp, s))
            es = ir.Constant(_I32, s)
            _accumulate(builder, acts, st, half, g, q[0], q[1], builder.extract_element(dsc, es))
            m = _splat(builder, builder.extract_element(mv, es), acts.n)
            xs = acts.scales(builder, acts.xs, g)
            msum = builder.fmul(m, xs) if s == 0 else _vfma(builder, m, xs, msum)
    builder.store(_vfma(builder, _splat(builder, dmin, acts.n), msum, builder.load(st.mins)), st.mins)


def _q4_k_finish(builder, st, p):
    v = _row_sums(builder, builder.fadd(builder.load(st.accs[p][0]), builder.load(st.accs[p][1])))
    mins = builder.load(st.mins)
    return tuple(builder.fsub(v[r], builder.extract_element(mins, ir.Constant(_I32, 2 * p + r))) for r in range(2))


def _q6_k_block(builder, blk, b, acts, st):
    """One super-block against every row: `int8dot._q6_k_row_x16` (weights times their scales once)."""
    intp = acts.intp
    for off in range(0, 210, 64):
        prefetch_ahead(builder, builder.gep(blk, [ir.Constant(intp, off)]))
    g0 = builder.mul(b, ir.Constant(intp, 8))
    dv = _f16(builder, blk, 208)
    sc16 = builder.sext(_load(builder, blk, ir.Constant(_I32, 192), _V16I8), _V16I16)
    for h in range(2):
        qh = _load(builder, blk, ir.Constant(_I32, 128 + 32 * h), ir.VectorType(ir.IntType(8), 32))
        for k in range(4):
            q = _q6_k_quants(builder, blk, qh, h, k)
            g = builder.add(g0, ir.Constant(intp, 4 * h + k))
            qlo, qhi = _widen16(builder, q, signed=True)
            i = 8 * h + 2 * k
            s0 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i] * 16))
            s1 = builder.shuffle_vector(sc16, sc16, ir.Constant(_V16I32, [i + 1] * 16))
            plo, phi = _dup(builder, builder.mul(qlo, s0)), _dup(builder, builder.mul(qhi, s1))
            _accumulate(builder, acts, st, k & 1, g, plo, phi, dv)  # d * xd_g per row


def _q6_k_finish(builder, st, p):
    return _row_sums(builder, builder.fadd(builder.load(st.accs[p][0]), builder.load(st.accs[p][1])))


def _kind_code(suffix):
    """(block bytes, 32-element groups per block, accumulators per pair, has a min term, block function,
    finish function) of a type."""
    if suffix == "q4_k":
        return 144, 8, 2, True, _q4_k_block, _q4_k_finish
    if suffix == "q6_k":
        return 210, 8, 2, False, _q6_k_block, _q6_k_finish
    block_bytes, decode = _LEGACY[suffix]

    def block(builder, blk, b, acts, st):
        _legacy_block(builder, blk, b, acts, st, decode)

    return block_bytes, 1, 1, decode in (_decode_q4_1, _decode_q5_1), block, _legacy_finish


def _spill(builder, st, state, n):
    """The accumulators of `st` (n rows) to or from the float32 array at `state` (STATE_FLOATS floats)."""
    slots = [a for accs in st.accs for a in accs]
    ptrs = [builder.bitcast(builder.gep(state, [ir.Constant(_I32, 16 * k)]), _V16F32.as_pointer())
            for k in range(len(slots))]  # fmt: skip
    if st.mins is not None:
        slots.append(st.mins)
        ptrs.append(builder.bitcast(builder.gep(state, [ir.Constant(_I32, 16 * (len(slots) - 1))]),
                                    ir.VectorType(_F32, n).as_pointer()))  # fmt: skip
    return slots, ptrs


@intrinsic(prefer_literal=True)
def dot_rows(typingctx, w, r, xq, xd, xsum, y, kind, b0, b1, state):
    """Blocks b0 .. b1 - 1 of y[i, r] = W[r] . x[i] for every activation row i (xq, xd, xsum in `pair_layout`:
    xsum [n // 32, n_x] with n_x = 2, 4 or 8), W of type KINDS[kind] (uint8 [n_rows, row_bytes]); `kind` an
    integer literal. The partial sums carry over in `state` (float32 [STATE_FLOATS]) from a call that ended at
    b0 (none for b0 = 0); the call that reaches the row's last block stores y. Slices of a row accumulate in the
    order of one call over the whole row, so the bits do not depend on the slicing."""
    if not isinstance(kind, types.IntegerLiteral):
        return None
    block_bytes, per_block, n_acc, has_min, block, finish = _kind_code(KINDS[kind.literal_value])
    sig = types.void(w, r, xq, xd, xsum, y, kind, b0, b1, state)

    def codegen(context, builder, signature, args):
        wa, xqa, xda, xsa, ya, sta = (
            context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 3, 4, 5, 9)
        )
        w_stride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
        intp = w_stride.type
        rr = context.cast(builder, args[1], signature.args[1], types.intp)
        first = context.cast(builder, args[7], signature.args[7], types.intp)
        stop = context.cast(builder, args[8], signature.args[8], types.intp)
        wrow = builder.gep(wa.data, [builder.mul(rr, w_stride)])
        n_groups, n_x = cgutils.unpack_tuple(builder, xsa.shape, 2)
        results = []
        for n in GROUPS:  # one code path per row count, chosen at run time
            results.append((n, builder.icmp_unsigned("==", n_x, ir.Constant(intp, n))))
        end = builder.append_basic_block("dot_rows_end")
        for n, is_n in results:
            body = builder.append_basic_block(f"dot_rows_{n}")
            nxt = builder.append_basic_block(f"dot_rows_not_{n}")
            builder.cbranch(is_n, body, nxt)
            builder.position_at_end(body)
            acts = _Acts(builder.bitcast(xqa.data, _I16.as_pointer()), xda.data, xsa.data, n, intp)
            st = _State(builder, acts, n_acc, has_min)
            slots, ptrs = _spill(builder, st, sta.data, n)
            with builder.if_then(builder.icmp_unsigned("!=", first, ir.Constant(intp, 0))):
                for a, ptr in zip(slots, ptrs, strict=True):
                    builder.store(builder.load(ptr, align=4), a)
            nb = builder.udiv(n_groups, ir.Constant(intp, per_block)) if per_block > 1 else n_groups
            with cgutils.for_range_slice(builder, first, stop, ir.Constant(intp, 1), inc=True) as (b, _):
                block(builder, builder.gep(wrow, [builder.mul(b, ir.Constant(intp, block_bytes))]), b, acts, st)
            with builder.if_else(builder.icmp_unsigned("<", stop, nb)) as (carry, last):
                with carry:
                    for a, ptr in zip(slots, ptrs, strict=True):
                        builder.store(builder.load(a), ptr, align=4)
                with last:
                    y_stride = cgutils.unpack_tuple(builder, ya.strides, 2)[0]
                    ybase = builder.bitcast(ya.data, ir.IntType(8).as_pointer())
                    for p in range(n // 2):
                        for k, v in enumerate(finish(builder, st, p)):
                            yrow = builder.gep(ybase, [builder.mul(ir.Constant(intp, 2 * p + k), y_stride)])
                            builder.store(v, builder.gep(builder.bitcast(yrow, _F32.as_pointer()), [rr]))
            builder.branch(end)
            builder.position_at_end(nxt)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _slice_blocks(n_cols, n_x, block_cols, slice_bytes):
    """Blocks of a row per slice: as many as keep the slice's activations (int16 values, pair scales, sums:
    ~3 n_x bytes a column) within slice_bytes; at least one."""
    return max(1, slice_bytes // (3 * n_x * block_cols))


@njit(cache=True, inline="always")
def _rows_sliced(w, xq, xd, xsum, y, kind, r0, r1, block_cols, slice_bytes, state):
    """Weight rows r0 .. r1 - 1 (at most CHUNK_ROWS) against every activation row, a slice of columns at a time for
    all of them: the slice's activations stay in L1 while the rows stream (8 rows of 4864 columns are ~117 KB of
    activations, more than L1 holds, which each weight row read again from L2)."""
    n_x = xsum.shape[1]
    nb = xsum.shape[0] * 32 // block_cols
    step = _slice_blocks(nb * block_cols, n_x, block_cols, slice_bytes)
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        for r in range(r0, r1):
            dot_rows(w, r, xq, xd, xsum, y, kind, b0, b1, state[r - r0])


@functools.cache
def int16_rows_kernel(suffix: str, slice_bytes: int = SLICE_BYTES) -> Callable[..., None]:
    """The parallel kernel `int16_rows_<suffix>(w, xq, xd, xsum, y)`: y [n_x, n_rows] = x @ W.T for W of the type
    with `kernel_suffix` `suffix` (uint8 [n_rows, row_bytes]) and x as int16 activations in `pair_layout` (n_x
    2, 4 or 8), chunks of CHUNK_ROWS weight rows in parallel, each a slice of columns at a time (`_rows_sliced`).
    Compiled once, cached on disk (the kernel closes over the type's index and ints: see
    `matmul_multirow.multirow_kernel`)."""
    kind = KINDS.index(suffix)
    block_cols = 256 if suffix in ("q4_k", "q6_k") else 32

    def kernel(w, xq, xd, xsum, y):
        n_rows = w.shape[0]
        for c in prange((n_rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
            state = np.empty((CHUNK_ROWS, STATE_FLOATS), dtype=np.float32)
            r0 = c * CHUNK_ROWS
            _rows_sliced(w, xq, xd, xsum, y, kind, r0, min(n_rows, r0 + CHUNK_ROWS), block_cols, slice_bytes, state)

    kernel.__name__ = kernel.__qualname__ = f"int16_rows_{suffix}"
    return njit(parallel=True, cache=True)(kernel)


@functools.cache
def int16_rows_serial(suffix: str, slice_bytes: int = SLICE_BYTES) -> Callable[..., None]:
    """`int16_rows_kernel` on the calling thread, for small weights (no parallel launch)."""
    kind = KINDS.index(suffix)
    block_cols = 256 if suffix in ("q4_k", "q6_k") else 32

    def kernel(w, xq, xd, xsum, y):
        n_rows = w.shape[0]
        state = np.empty((CHUNK_ROWS, STATE_FLOATS), dtype=np.float32)
        for r0 in range(0, n_rows, CHUNK_ROWS):
            _rows_sliced(w, xq, xd, xsum, y, kind, r0, min(n_rows, r0 + CHUNK_ROWS), block_cols, slice_bytes, state)

    kernel.__name__ = kernel.__qualname__ = f"int16_rows_serial_{suffix}"
    return njit(cache=True)(kernel)


@njit(cache=True)
def q5_0_as_q8_0(rows):
    """Q5_0 rows (uint8 [n_rows, 22 * nb]) as Q8_0 rows (uint8 [n_rows, 34 * nb]) of the same values: each block's
    f16 scale copied, its 32 weights (nibble | fifth bit << 4) - 16 as signed bytes (ggml's dequantize_row_q5_0).
    The several-row kernel then decodes a block with two sign extensions where Q5_0's bit plane took ~6 more vector
    uops: the same integer dots and float operations, so the same bits as Q5_0's own kernels."""
    n_rows, nb = rows.shape[0], rows.shape[1] // 22
    out = np.empty((n_rows, 34 * nb), dtype=np.uint8)
    for r in range(n_rows):
        for b in range(nb):
            s, o = 22 * b, 34 * b
            out[r, o] = rows[r, s]
            out[r, o + 1] = rows[r, s + 1]
            qh = (np.uint32(rows[r, s + 2]) | (np.uint32(rows[r, s + 3]) << 8) | (np.uint32(rows[r, s + 4]) << 16)
                  | (np.uint32(rows[r, s + 5]) << 24))  # fmt: skip
            for i in range(16):
                byte = np.int32(rows[r, s + 6 + i])
                lo = (byte & 15) | (np.int32((qh >> i) & 1) << 4)
                hi = (byte >> 4) | (np.int32((qh >> (i + 16)) & 1) << 4)
                out[r, o + 2 + i] = np.uint8((lo - 16) & 0xFF)
                out[r, o + 18 + i] = np.uint8((hi - 16) & 0xFF)
    return out


@njit(cache=True, inline="always")
def _pair_row(x, i, xq, xd_p, xsum_t, q, d, s):
    """Row i of `quantize_pairs` (rows past n_x: the last row again), quantized into the scratch q, d, s and then
    scattered to its pair slots."""
    n_x, n = x.shape
    half = xsum_t.shape[1] // 2
    i = np.int64(i)  # a prange index is unsigned: mixed with signed ints it would turn the indices into floats
    quantize_activations16(x[min(i, n_x - 1)], q, d, s)
    p, k = i // 2, i % 2
    for g in range(n // 32):
        for lane in range(8 * k, 8 * k + 8):
            xd_p[g, p, lane] = d[g]
        xsum_t[g, i] = s[g]
        for h in range(2):
            dst = ((g * half + p) * 2 + h) * 32 + 16 * k
            src = 32 * g + 16 * h
            for e in range(16):
                xq[dst + e] = q[src + e]


@njit(cache=True)
def quantize_pairs(x, xq, xd_p, xsum_t):
    """`pair_layout` of x float32 [n_x, n] into xq int16 [rows * n] (flat), xd_p float32 [n // 32, rows // 2, 16],
    xsum_t float32 [n // 32, rows]: row i (rows past n_x: the last row again) quantized by
    `quantize_activations16`, then its elements and scales scattered to their pair slots (one compiled pass
    instead of a dozen numpy calls a matmul)."""
    n = x.shape[1]
    q = np.empty(n, dtype=np.int16)
    d = np.empty(n // 32, dtype=np.float32)
    s = np.empty(n // 32, dtype=np.float32)
    for i in range(xsum_t.shape[1]):
        _pair_row(x, i, xq, xd_p, xsum_t, q, d, s)


@njit(parallel=True, cache=True)
def quantize_pairs_parallel(x, xq, xd_p, xsum_t):
    """`quantize_pairs` with the rows on all kernel threads (the same values: rows are independent)."""
    n = x.shape[1]
    for i in prange(xsum_t.shape[1]):
        q = np.empty(n, dtype=np.int16)
        d = np.empty(n // 32, dtype=np.float32)
        s = np.empty(n // 32, dtype=np.float32)
        _pair_row(x, i, xq, xd_p, xsum_t, q, d, s)


# From this many values (rows x columns) `pair_layout` quantizes on all kernel threads: 8 rows of 4864 (Qwen2.5's
# down projection) took ~60 us on one thread while the other waited for the matmul.
PARALLEL_QUANTIZE_VALUES = 16384


def _aligned(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An empty array whose data starts on a 64-byte boundary: the kernels read it in 64-byte vectors, and one that
    straddles two cache lines costs two loads."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + size].view(dtype).reshape(shape)


# Each thread's activation buffers by (rows, n): a decode step lays out its activations ~5 times a layer, and two
# aligned allocations took ~20 us of a call's ~40 (Gemma 3's 640 columns), on the calling thread while the other
# kernel threads wait.
_WORKSPACE = threading.local()


def _workspace(rows: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's (xq, xd, xsum) buffers for `rows` padded rows of n elements, made on first use."""
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    bufs = cache.get((rows, n))
    if bufs is None:
        if len(cache) >= 16:  # a model uses a handful of widths; bound the memory anyway
            cache.clear()
        bufs = cache[(rows, n)] = (
            _aligned((rows * n,), np.int16),
            _aligned((n // 32, rows // 2, 16), np.float32),
            np.empty((n // 32, rows), dtype=np.float32),
        )
    return bufs


def padded_rows(n_x: int) -> int:
    """The row count a call computes for n_x activation rows (2 <= n_x <= 8): 2, 4 or 8."""
    return next(n for n in GROUPS if n >= n_x)


def pair_layout(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x float32 [n_x, n] (n_x <= 8, n a multiple of 32) as the kernels' int16 activations (xq, xd, xsum): rows
    padded to `padded_rows` with copies of the last, each quantized as `quantize_activations16`; xq flat, per
    32-element group g, per pair of rows p, per half h (elements 16h .. 16h + 15): those 16 of row 2p, then those
    of row 2p + 1 (one 512-bit load); xd [n // 32, rows // 2, 16]: per group and pair, row 2p's scale in 8 lanes,
    then row 2p + 1's (the lanes of the pair's products); xsum transposed to [n // 32, rows] (one vector load per
    group).

    The arrays are this thread's buffers for the shape: valid until its next `pair_layout` of the same shape."""
    n_x, n = x.shape
    rows = padded_rows(n_x)
    xq, xd, xsum = _workspace(rows, n)
    parallel = rows * n >= PARALLEL_QUANTIZE_VALUES and get_num_threads() > 1
    (quantize_pairs_parallel if parallel else quantize_pairs)(np.ascontiguousarray(x, dtype=np.float32), xq, xd, xsum)
    return xq, xd, xsum
