"""Quantized matmuls whose float32 results equal llama.cpp's x86 AVX2 CPU kernels bit for bit.

`mul_mat_vec_dot(w, ggml_type, xq, n_cols)[t, r]` is ggml_vec_dot_<type>_q8_<..>(weight row r, activation
row t) for Q8_0, Q5_0 and Q4_0 (x Q8_0), Q4_1 (x Q8_1), Q4_K, Q5_K and Q6_K (x Q8_K); activations come from
`ggml_exact.quantize`. Each block's integer dot is the same 8 int32 lanes as ggml's (lane l sums elements
4l..4l+3 of a 32-byte group, with the group's scale where there is one), converted to float and fused-
multiply-added into 8 float lanes; the lanes are summed in hsum_float_8's order ((0+4)+(2+6))+((1+5)+(3+7)).
(Q5_K's mins term is a scalar: per block, summs = fma(-d_x * dmin_w, float(mins . bsums), summs), added last.)
`mul_mat_tiled` is ggml's tiled K-quant matmul (ggml-cpu/tiled), which MUL_MAT uses for Q4_K/Q5_K/Q6_K from 8
activation rows on (x86 does not repack Q5_K/Q6_K). `mul_mat_q` quantizes float32 activations and picks the
kernel ggml picks.

The kernels are LLVM vector IR (Numba does not vectorise these lane patterns itself): on AVX2 the integer
dot uses the very instructions ggml uses (vpsignb, vpmaddubsw, vpmaddwd), elsewhere portable IR with the
same integer results (`simd`). Each weight type's block dot is a class of `dots_legacy` (32-element types)
or `dots_kquants` (super-blocks of 256), one per ggml kernel; this module turns them into tile kernels
(one weight row against 1 or 4 activation rows, one switch over the kernel code) and picks ggml's kernel.

Batched Q8_0/Q5_0/Q4_0: for two or more activation rows ggml first offers the matmul to llamafile_sgemm, whose
tinyBLAS_Q0_AVX takes Q8_0 and Q5_0 (also Q4_0, IQ4_NL) weights. Its kernels (gemm<RM,RN>, gemm4xN,
gemmMx4) do per output exactly what vec_dot does: the same sign/maddubs/madd integer lanes, one
_mm256_fmadd_ps of d_w * d_x (the same float32 product) per block in block order from zero, and an 8-lane
horizontal sum in the same order. Only the tiling over outputs differs, so vec_dot's results are also
tinyBLAS's (tests/test_ggml_exact_quant.py checks both against the library; tests/test_ggml_exact_q4_0.py
for Q4_0).

Q4_0 weights with n_out % 8 == 0 are repacked by llama.cpp (q4_0_8x8_q8_0): `mul_mat_q4_0_repacked`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu.ggml_exact import dots_kquants, dots_legacy
from embedkit.kernels.cpu.ggml_exact.dots_kquants import (
    BlockQ4_KGemm,
    BlockQ4_KGemv,
    BlockQ4_KTiled,
    BlockQ5_KTiled,
    BlockQ6_KTiled,
)
from embedkit.kernels.cpu.ggml_exact.dots_legacy import BlockQ4_0Repacked
from embedkit.kernels.cpu.ggml_exact.quantize import quantize_q8_0, quantize_q8_1, quantize_q8_K
from embedkit.kernels.cpu.ggml_exact.simd import F32
from embedkit.quant import QUANT_TYPES, types_with
from embedkit.quant.registry import GGML_EXACT

# the ggml type ids as plain ints: the compiled kernels compare a type argument against them
Q4_0, Q4_1, Q5_0, Q8_0 = int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0), int(GGMLType.Q8_0)
Q4_K, Q5_K, Q6_K = int(GGMLType.Q4_K), int(GGMLType.Q5_K), int(GGMLType.Q6_K)

# weight type -> (elements per block, weight block bytes, activation block bytes), from the quant registry
_LAYOUT = {
    int(t): (QUANT_TYPES[t].block_size, QUANT_TYPES[t].type_size, QUANT_TYPES[t].activation_bytes)
    for t in types_with(GGML_EXACT)
}

_TILE = 4  # activation rows per call of a tile kernel: a weight block is decoded once for all of them

# kernel codes: a weight type's own code is its vec_dot; the other kernels ggml has for some types
_TILED = 100  # + type: the tiled K-quant variants
_GEMV, _GEMM = 200, 201  # repacked Q4_K kernels
_Q4_0_REPACK = 202  # repacked Q4_0 kernels (gemm and gemv give the same bits)

# kernel code -> block kernel: every type with ggml-exact kernels (the registry's ggml_exact path) by its
# vec_dot, named Block<type> in its family's module, then the other kernels
_KINDS = {
    int(t): getattr(dots_kquants if QUANT_TYPES[t].block_size == 256 else dots_legacy, f"Block{t.name}")
    for t in types_with(GGML_EXACT)
} | {
    _TILED + Q4_K: BlockQ4_KTiled,
    _TILED + Q5_K: BlockQ5_KTiled,
    _TILED + Q6_K: BlockQ6_KTiled,
    _GEMV: BlockQ4_KGemv,
    _GEMM: BlockQ4_KGemm,
    _Q4_0_REPACK: BlockQ4_0Repacked,
}


def _tile_rows(builder, kind, wrow, xrows, nb, intp) -> list:
    """IR of one block kernel over nb blocks: weight row `wrow` against activation rows `xrows`; the rows'
    float32 results."""
    slots = [[cgutils.alloca_once_value(builder, v) for v in kind.init()] for _ in xrows]
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        dec = kind.decode(builder, builder.gep(wrow, [builder.mul(b, ir.Constant(intp, kind.w_bytes))]))
        xoff = builder.mul(b, ir.Constant(intp, kind.x_bytes))
        for xrow, row_slots in zip(xrows, slots, strict=True):
            acc = [builder.load(s) for s in row_slots]
            new = kind.update(builder, dec, builder.gep(xrow, [xoff]), acc)
            for s, v in zip(row_slots, new, strict=True):
                builder.store(v, s)
    return [kind.finish(builder, [builder.load(s) for s in row_slots]) for row_slots in slots]


def _make_tile(kinds: dict[int, type], n_rows: int):
    """Intrinsic (kernel, w, r, xq, t, nb) -> n_rows float32: weight row r against activation rows
    t..t+n_rows-1, nb blocks each (w, xq: uint8 2-D, C order), by the block kernel kinds[kernel] (zeros for
    a code not in `kinds`)."""

    def tile(typingctx, kernel, w, r, xq, t, nb):
        if not (isinstance(w, types.Array) and w.ndim == 2 and isinstance(xq, types.Array) and xq.ndim == 2):
            return None
        sig = types.UniTuple(types.float32, n_rows)(kernel, w, r, xq, t, nb)

        def codegen(context, builder, signature, args):
            wa = context.make_array(signature.args[1])(context, builder, args[1])
            xa = context.make_array(signature.args[3])(context, builder, args[3])

            def idx(i):
                return context.cast(builder, args[i], signature.args[i], types.intp)

            wstride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
            xstride = cgutils.unpack_tuple(builder, xa.strides, 2)[0]
            intp = wstride.type
            wrow = builder.gep(wa.data, [builder.mul(idx(2), wstride)])
            t0, nb_blocks = idx(4), idx(5)
            xrows = [
                builder.gep(xa.data, [builder.mul(builder.add(t0, ir.Constant(intp, k)), xstride)])
                for k in range(n_rows)
            ]
            outs = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(n_rows)]
            done = builder.append_basic_block("tile.done")
            switch = builder.switch(idx(0), done)
            for code, kind in kinds.items():
                case = builder.append_basic_block(f"tile.{code}")
                switch.add_case(ir.Constant(intp, code), case)
                builder.position_at_end(case)
                for out, v in zip(outs, _tile_rows(builder, kind, wrow, xrows, nb_blocks, intp), strict=True):
                    builder.store(v, out)
                builder.branch(done)
            builder.position_at_end(done)
            return context.make_tuple(builder, signature.return_type, [builder.load(o) for o in outs])

        return sig, codegen

    tile.__name__ = tile.__qualname__ = f"tile{n_rows}"
    return intrinsic(tile)


_tile_1 = _make_tile(_KINDS, 1)
_tile_n = _make_tile({code: kind for code, kind in _KINDS.items() if code != _GEMV}, _TILE)  # gemv: < 4 rows


@njit(parallel=True, cache=True, nogil=True)
def _mul_mat(w, kernel, xq, nb):
    n_tok = xq.shape[0]
    out = np.empty((n_tok, w.shape[0]), np.float32)
    for r in prange(w.shape[0]):
        t = 0
        while t + _TILE <= n_tok:
            v = _tile_n(kernel, w, r, xq, t, nb)
            for k in range(_TILE):
                out[t + k, r] = v[k]
            t += _TILE
        while t < n_tok:
            out[t, r] = _tile_1(kernel, w, r, xq, t, nb)[0]
            t += 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def _mul_vec(w, kernel, xq, nb):
    # one activation row (a decode step): a loop of its own compiles to faster code than _mul_mat's
    # (22% on Gemma 3's 262144-row output head)
    out = np.empty((1, w.shape[0]), np.float32)
    for r in prange(w.shape[0]):
        out[0, r] = _tile_1(kernel, w, r, xq, 0, nb)[0]
    return out


def _run(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int, kernel: int) -> np.ndarray:
    block, w_bytes, x_bytes = _LAYOUT[ggml_type]
    if n_cols % block:
        raise ValueError(f"n_cols {n_cols} is not a multiple of the block size {block}")
    nb = n_cols // block
    w = np.ascontiguousarray(w, dtype=np.uint8)
    xq = np.ascontiguousarray(xq, dtype=np.uint8)
    if w.ndim != 2 or w.shape[1] != nb * w_bytes or xq.ndim != 2 or xq.shape[1] != nb * x_bytes:
        raise ValueError(f"shapes {w.shape} x {xq.shape} do not fit {n_cols} columns of ggml type {ggml_type}")
    if xq.shape[0] == 1:
        return _mul_vec(w, kernel, xq, nb)
    return _mul_mat(w, kernel, xq, nb)


def mul_mat_vec_dot(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: out[t, r] = ggml x86 vec_dot of weight row w[r] and activation row xq[t].

    w: uint8 [n_out, row_bytes] rows of ggml type Q8_0 (8), Q5_0 (6), Q4_0 (2), Q4_1 (3), Q4_K (12), Q5_K (13)
    or Q6_K (14); xq: uint8 [n_tok, bytes] rows of the matching activation type (Q8_0 for Q8_0/Q5_0/Q4_0, Q8_1
    for Q4_1, Q8_K for the K-quants) as the
    `ggml_exact.quantize` functions make them; n_cols: elements per row. Parallel over weight rows; the
    result does not depend on the thread count. For Q8_0/Q5_0/Q4_0 this is also tinyBLAS_Q0_AVX's result.
    """
    if ggml_type not in _LAYOUT:
        raise ValueError(f"ggml type {ggml_type} has no exact vec_dot kernel")
    return _run(w, ggml_type, xq, n_cols, ggml_type)


def mul_mat_tiled(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out] as ggml's tiled K-quant matmul (ggml-cpu/tiled, AVX2) computes it.

    Q4_K (12), Q5_K (13) or Q6_K (14) weight rows w times Q8_K activation rows xq. Per output and super-block
    it sums the whole block's integer dot exactly, scales it once by the weight's d (Q4_K/Q5_K: minus dmin
    times the mins' dot, fused) and fused-multiply-adds that times the activation's d into one float accumulator.
    """
    if ggml_type not in (Q4_K, Q5_K, Q6_K):
        raise ValueError(f"ggml type {ggml_type} has no tiled kernel")
    return _run(w, ggml_type, xq, n_cols, _TILED + ggml_type)


def mul_mat_q4_K_repacked(w: np.ndarray, x: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: x @ W.T for a Q4_K weight as ggml computes it from its CPU_REPACK buffer.

    On AVX2 llama.cpp repacks every Q4_K weight with n_out % 8 == 0 at load (q4_K_8x8_q8_K) and uses it
    for any number of activation rows: rows [0, n4), n4 = n_tok - n_tok % 4, through the gemm kernel and the
    rest through the gemv kernel. Activations are quantized to Q8_K (ggml's 4-row quantizer differs from
    quantize_row_q8_K only on a +max/-max tie, where the codes and the scale change sign together, so the
    products are the same).
    """
    return _repacked_q4_K(w, quantize_q8_K(x), n_cols)


def _repacked_q4_K(w: np.ndarray, xq: np.ndarray, n_cols: int) -> np.ndarray:
    n4 = xq.shape[0] - xq.shape[0] % _TILE
    if n4 == xq.shape[0]:
        return _run(w, Q4_K, xq, n_cols, _GEMM)
    if n4 == 0:
        return _run(w, Q4_K, xq, n_cols, _GEMV)
    return np.concatenate([_run(w, Q4_K, xq[:n4], n_cols, _GEMM), _run(w, Q4_K, xq[n4:], n_cols, _GEMV)])


def mul_mat_q4_0_repacked(w: np.ndarray, x: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: x @ W.T for a Q4_0 weight as ggml computes it from its CPU_REPACK buffer.

    On AVX2 llama.cpp repacks every Q4_0 weight with n_out % 8 == 0 at load (q4_0_8x8_q8_0) and runs the
    gemm kernel on activation rows in groups of four and the gemv kernel on the rest. Both sum each block's
    integer dot exactly and fused-multiply-add it times d_w * d_x into one float per output, so all rows get
    the same arithmetic; the 4-row Q8_0 quantizer makes the same bytes as quantize_row_q8_0 (interleaved).
    """
    return _run(w, Q4_0, quantize_q8_0(x), n_cols, _Q4_0_REPACK)


# ggml's activation quantizer per vec_dot type; weight type -> the quantizer of its activation type
_QUANTIZE = {GGMLType.Q8_0: quantize_q8_0, GGMLType.Q8_1: quantize_q8_1, GGMLType.Q8_K: quantize_q8_K}
_ACTIVATION = {int(t): _QUANTIZE[QUANT_TYPES[t].activation] for t in types_with(GGML_EXACT)}
TILED_MIN_TOKENS = 8  # ggml_tiled_min_batch


def mul_mat_q(w: np.ndarray, ggml_type: int, x: np.ndarray, n_cols: int, repack: bool = True) -> np.ndarray:
    """ggml_compute_forward_mul_mat on the CPU (x86 AVX2) for quantized weights: float32 [n_tok, n_out].

    x (float32 [n_tok, n_cols]) is quantized to the weight type's vec_dot type (Q8_0 for Q8_0/Q5_0/Q4_0, Q8_1
    for Q4_1, Q8_K for Q4_K/Q5_K/Q6_K) exactly as ggml does, then multiplied by the kernel ggml picks:
    - Q4_K and Q4_0 with n_out % 8 == 0, when `repack` (llama.cpp's model loader puts such weights in
      ggml's CPU_REPACK buffer; a tensor in a plain ggml buffer is not repacked): `mul_mat_q4_K_repacked`,
      `mul_mat_q4_0_repacked`;
    - Q4_K/Q5_K/Q6_K with n_tok >= 8: the tiled K-quant matmul (on by default; GGML_CPU_TILED_MM=0 turns it off
      in ggml), `mul_mat_tiled`;
    - Q8_0/Q5_0/Q4_0 with n_tok >= 2: llamafile_sgemm's tinyBLAS_Q0_AVX, which gives vec_dot's bits;
    - otherwise vec_dot per output, `mul_mat_vec_dot`.
    Not covered: the other types ggml repacks on AVX2 (IQ4_NL, MXFP4).
    """
    if ggml_type not in _ACTIVATION:
        raise ValueError(f"ggml type {ggml_type} has no exact kernel")
    return _mul_mat_quantized(w, ggml_type, _ACTIVATION[ggml_type](x), n_cols, repack)


def mul_mat_q_shared(weights: list[tuple[np.ndarray, int]], x: np.ndarray, n_cols: int) -> list[np.ndarray]:
    """`mul_mat_q` of one input x with several (w, ggml_type) weights (Q/K/V, gate/up), quantizing x once per
    activation type: ggml quantizes it once per matmul, to the same bytes."""
    quantized: dict[object, np.ndarray] = {}
    out = []
    for w, ggml_type in weights:
        if ggml_type not in _ACTIVATION:
            raise ValueError(f"ggml type {ggml_type} has no exact kernel")
        quantize = _ACTIVATION[ggml_type]
        if quantize not in quantized:
            quantized[quantize] = quantize(x)
        out.append(_mul_mat_quantized(w, ggml_type, quantized[quantize], n_cols, True))
    return out


def _mul_mat_quantized(w: np.ndarray, ggml_type: int, xq: np.ndarray, n_cols: int, repack: bool) -> np.ndarray:
    if repack and ggml_type == Q4_K and w.shape[0] % 8 == 0:
        return _repacked_q4_K(w, xq, n_cols)
    if repack and ggml_type == Q4_0 and w.shape[0] % 8 == 0:
        return _run(w, Q4_0, xq, n_cols, _Q4_0_REPACK)
    if ggml_type in (Q4_K, Q5_K, Q6_K) and xq.shape[0] >= TILED_MIN_TOKENS:
        return mul_mat_tiled(w, ggml_type, xq, n_cols)
    return mul_mat_vec_dot(w, ggml_type, xq, n_cols)
