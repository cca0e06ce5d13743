"""`y = x @ W.T` for quantized W: the fused matvec for a few tokens, dequantized tiles + BLAS for batches.

Batches (and types without a fused matvec) dequantize TILE_BYTES-sized tiles of W rows into one small
float32 buffer, reused for every tile, and multiply each tile with the whole batch through BLAS: the
weight bytes are read once per batch, never once per token.
"""

from __future__ import annotations

import numba
import numpy as np

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matvec_int8, matvec_kquants, matvec_legacy, q4_1_packed, q5_0_packed
from embedkit.kernels.cpu.dispatch import DEQUANTIZERS
from embedkit.kernels.cpu.threads import get_num_threads

MATVECS = {
    GGMLType.Q8_0: matvec_legacy.matvec_q8_0,
    GGMLType.Q4_0: matvec_legacy.matvec_q4_0,
    GGMLType.Q4_1: matvec_legacy.matvec_q4_1,
    GGMLType.Q5_0: matvec_legacy.matvec_q5_0,
    GGMLType.Q5_1: matvec_legacy.matvec_q5_1,
    GGMLType.IQ4_NL: matvec_legacy.matvec_iq4_nl,
    GGMLType.Q4_K: matvec_kquants.matvec_q4_k,
    GGMLType.Q5_K: matvec_kquants.matvec_q5_k,
    GGMLType.Q6_K: matvec_kquants.matvec_q6_k,
    GGMLType.IQ4_XS: matvec_kquants.matvec_iq4_xs,
    GGMLType.F16: matvec_legacy.matvec_f16,
    GGMLType.BF16: matvec_legacy.matvec_bf16,
}

# Decode kernels with int8 activations (llama.cpp's scheme: x quantized to int8 blocks of 32 once per
# matvec, integer block dots, float accumulators). Single thread on Gemma 3 270M's 262144x640 Q8_0 head:
# 18 GB/s vs 3 GB/s for the float32 kernel (benchmarks/RESULTS.md).
# Their relative error is ~1e-2 of max|y| instead of ~1e-6; INT8_ACTIVATIONS = False turns them off.
INT8_MATVECS = {  # type -> (parallel kernel, serial kernel over a row range, activation format)
    GGMLType.Q8_0: (matvec_int8.matvec_q8_0_i8, matvec_int8.rows_q8_0_i8, matvec_int8.ACT_Q8_0),
    GGMLType.Q4_0: (matvec_int8.matvec_q4_0_i8, matvec_int8.rows_q4_0_i8, matvec_int8.ACT_Q8_0),
    GGMLType.Q4_1: (matvec_int8.matvec_q4_1_i8, matvec_int8.rows_q4_1_i8, matvec_int8.ACT_Q8_1),
    GGMLType.Q5_0: (matvec_int8.matvec_q5_0_i8, matvec_int8.rows_q5_0_i8, matvec_int8.ACT_Q8_0),
    GGMLType.Q5_1: (matvec_int8.matvec_q5_1_i8, matvec_int8.rows_q5_1_i8, matvec_int8.ACT_Q8_1),
    GGMLType.Q4_K: (matvec_int8.matvec_q4_k_i8, matvec_int8.rows_q4_k_i8, matvec_int8.ACT_Q8_K),
    GGMLType.Q6_K: (matvec_int8.matvec_q6_k_i8, matvec_int8.rows_q6_k_i8, matvec_int8.ACT_Q8_K),
}
INT8_ACTIVATIONS = True
# Bits of those integer activations: 16 (default: decode stays within ~1e-5 of float32, at the int8 kernels'
# speed) or 8 (llama.cpp's own rounding, ~1e-2). llama.cpp's 8-bit rounding is noise that depends on ulps
# upstream; an engine that is not bit-identical to llama.cpp agrees with it more often without adding its
# own draw of that noise (tests/data/models/README.md).
ACTIVATION_BITS = 16

# Types with a decode layout repacked once from the GGUF bytes (same size, cheaper to decode; used with int16
# activations only): type -> (whether rows of n_cols have it, pack(rows) -> packed, (parallel, serial) kernels).
# Q5_0 (Qwen2.5's gate/up/q/o): 14.6 -> 25 GB/s on two threads; Q4_1 (SmolLM2): 102.6 -> 108.7 tok/s decode
# (same process, alternating). Both give bit-identical results (q5_0_packed.py, q4_1_packed.py).
PACKED_MATVECS = {
    GGMLType.Q5_0: (
        q5_0_packed.can_pack,
        q5_0_packed.pack_q5_0,
        (q5_0_packed.matvec_q5_0_packed, q5_0_packed.rows_q5_0_packed),
    ),
    GGMLType.Q4_1: (
        q4_1_packed.can_pack,
        q4_1_packed.pack_q4_1,
        (q4_1_packed.matvec_q4_1_packed, q4_1_packed.rows_q4_1_packed),
    ),
}
PACKED_DECODE = True

# Weights smaller than this run the int8 decode kernels on the calling thread. Gemma 3 270M decode, 2 threads,
# idle dev VM: 75.0 tok/s with 256 KiB, 72.9 with 0 (every call parallel), 65.4 with 4 MiB (only the output
# head parallel). With the second core busy, each parallel launch can stall for milliseconds (an empty prange
# took 3.7-12 ms there) and the 4 MiB setting did far better (25.6 tok/s vs 1.1 all-parallel); use
# EMBEDKIT_THREADS=1 on a loaded machine.
# 2026-11-25 night, same process alternating (best of 4 x 128 tokens): 128 KiB vs 256 KiB gave SmolLM2 112.4 vs
# 106.9 tok/s (its 576x576 Q4_1 attn_q/o, 199 KiB, now parallel), Gemma 3 85.1 vs 82.5, Qwen2.5 49.5 vs 49.6;
# 64 KiB no better. A parallel launch (Numba's omp layer) costs ~2 us on the idle VM.
PARALLEL_MIN_BYTES = 128 << 10

# Up to this many tokens, run the fused matvec once per token; more, use dequantized tiles + BLAS.
MAX_MATVEC_TOKENS = 4
# Float32 bytes of one dequantized tile of W (8 MiB: 512 rows of 4096; larger tiles gave BLAS more room).
TILE_BYTES = 8 << 20
# Dequantize tiles on the calling thread: switching between Numba's and OpenBLAS's thread pools for
# every tile cost milliseconds (spinning BLAS workers), more than the dequantization itself.
SERIAL = True


def integer_activations(x: np.ndarray, fmt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One token's activations for the integer decode kernels: (xq int16 or int8, xd, xsum), see ACTIVATION_BITS.
    With 16 bits the format is the same for every weight type (`fmt`, llama.cpp's int8 format, is unused)."""
    n = x.shape[0]
    xd = np.empty(n // 32, dtype=np.float32)
    xsum = np.empty(n // 32, dtype=np.float32)
    if ACTIVATION_BITS == 16:
        xq = np.empty(n, dtype=np.int16)
        matvec_int8.quantize_activations16(x, xq, xd, xsum)
    else:
        xq = np.empty(n, dtype=np.int8)
        matvec_int8.quantize_activations(x, xq, xd, xsum, fmt)
    return xq, xd, xsum


def decode_layout(rows: np.ndarray, t: GGMLType, n_cols: int) -> np.ndarray | None:
    """W's bytes repacked for the decode kernels (a new array, made once per weight and passed back as
    `packed`), or None where its type or row length has no such layout or decode would not use it (int8
    activations)."""
    entry = PACKED_MATVECS.get(t)
    if entry is None or not (PACKED_DECODE and INT8_ACTIVATIONS and ACTIVATION_BITS == 16) or not entry[0](n_cols):
        return None
    return entry[1](rows)


def _uses_packed(packed: np.ndarray | None) -> bool:
    return packed is not None and INT8_ACTIVATIONS and ACTIVATION_BITS == 16 and PACKED_DECODE


def _integer_matvec(
    rows: np.ndarray,
    kernels: tuple,
    acts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_rows: int | None = None,
):
    """y [n_tokens, n_rows] from the integer decode kernels of one weight type, one token's activations each
    (`n_rows`: where `rows` is a packed layout whose first dimension is not the row count)."""
    if n_rows is None:
        n_rows = rows.shape[0]
    y = np.empty((len(acts), n_rows), dtype=np.float32)
    parallel = rows.nbytes >= PARALLEL_MIN_BYTES and get_num_threads() > 1
    for i, (xq, xd, xsum) in enumerate(acts):
        if parallel:
            kernels[0](rows, xq, xd, xsum, y[i])
        else:
            kernels[1](rows, xq, xd, xsum, y[i], 0, n_rows)
    return y


def matmul_rows(
    x: np.ndarray, rows: np.ndarray, t: GGMLType, n_cols: int, packed: np.ndarray | None = None
) -> np.ndarray:
    """x float32 [n_tokens, n_cols] @ W.T for W = `rows` (uint8 [n_rows, row_bytes] of type t); `packed`, W's
    `decode_layout` if it has one, serves decode."""
    n_tokens = x.shape[0]
    n_rows = rows.shape[0]
    if n_tokens <= MAX_MATVEC_TOKENS and _uses_packed(packed):
        acts = [integer_activations(x[i], matvec_int8.ACT_Q8_0) for i in range(n_tokens)]
        return _integer_matvec(packed, PACKED_MATVECS[t][2], acts, n_rows)
    if t == GGMLType.F32:
        return x @ rows.view(np.float32).T
    int_kernels = INT8_MATVECS.get(t) if INT8_ACTIVATIONS else None
    if int_kernels is not None and n_tokens <= MAX_MATVEC_TOKENS:
        return _integer_matvec(rows, int_kernels, [integer_activations(x[i], int_kernels[2]) for i in range(n_tokens)])
    kernel = MATVECS.get(t)
    if kernel is not None and n_tokens <= MAX_MATVEC_TOKENS:
        y = np.empty((n_tokens, n_rows), dtype=np.float32)
        # sums of x per 32 elements, for the offset/min terms (numpy: cheaper than another parallel launch)
        if n_cols % 32 == 0:
            xsum = x.reshape(n_tokens, n_cols // 32, 32).sum(axis=2, dtype=np.float32)
        else:  # float types of any length: no offsets
            xsum = np.zeros((n_tokens, 0), dtype=np.float32)
        for i in range(n_tokens):
            kernel(rows, x[i], xsum[i], y[i])
        return y
    return tiled_matmul(x, rows, t, n_cols)


def matmul_rows_many(
    x: np.ndarray, weights: list[tuple[np.ndarray, GGMLType, np.ndarray | None]], n_cols: int
) -> list[np.ndarray]:
    """`matmul_rows` for several W (rows, type, packed layout or None) sharing the input x: decode quantizes x
    once per activation format."""
    n_tokens = x.shape[0]
    if n_tokens > MAX_MATVEC_TOKENS or not INT8_ACTIVATIONS:
        return [matmul_rows(x, rows, t, n_cols) for rows, t, _ in weights]
    quantized: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    out = []
    for rows, t, packed in weights:
        if _uses_packed(packed):  # int16 activations: the same format as every other type's
            acts = quantized.get(-1)
            if acts is None:
                acts = quantized[-1] = [integer_activations(x[i], matvec_int8.ACT_Q8_0) for i in range(n_tokens)]
            out.append(_integer_matvec(packed, PACKED_MATVECS[t][2], acts, rows.shape[0]))
            continue
        int_kernels = INT8_MATVECS.get(t)
        if int_kernels is None:
            out.append(matmul_rows(x, rows, t, n_cols))
            continue
        key = int_kernels[2] if ACTIVATION_BITS == 8 else -1  # int16 activations: one format for every type
        acts = quantized.get(key)
        if acts is None:
            acts = quantized[key] = [integer_activations(x[i], int_kernels[2]) for i in range(n_tokens)]
        out.append(_integer_matvec(rows, int_kernels, acts))
    return out


def tiled_matmul(x: np.ndarray, rows: np.ndarray, t: GGMLType, n_cols: int) -> np.ndarray:
    """x @ W.T by dequantizing W a tile of rows at a time into one reused buffer and calling BLAS."""
    n_rows = rows.shape[0]
    dequant = DEQUANTIZERS[t]
    tile = max(16, min(n_rows, TILE_BYTES // (4 * n_cols)))
    buf = np.empty((tile, n_cols), dtype=np.float32)
    y = np.empty((x.shape[0], n_rows), dtype=np.float32)
    n_threads = numba.get_num_threads()
    for r0 in range(0, n_rows, tile):
        r1 = min(n_rows, r0 + tile)
        w = buf[: r1 - r0]
        if SERIAL:
            numba.set_num_threads(1)
            try:
                dequant(rows[r0:r1], w)
            finally:
                numba.set_num_threads(n_threads)
        else:
            dequant(rows[r0:r1], w)
        y[:, r0:r1] = x @ w.T
    return y
