"""`y = x @ W.T` for quantized W: the fused matvec for a few tokens, the small-batch kernel for a batched
decode step or a short prompt (`matmul_multirow`), dequantized tiles + BLAS for larger batches.

Batches (and types without a fused matvec) dequantize TILE_BYTES-sized tiles of W rows into one small
float32 buffer, reused for every tile, and multiply each tile with the whole batch through BLAS: the
weight bytes are read once per batch, never once per token.
"""

from __future__ import annotations

import weakref

import numba
import numpy as np

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matvec_int8, matvec_kquants, matvec_legacy, multirow_int16, q4_1_packed, q5_0_packed
from embedkit.kernels.cpu.dispatch import DEQUANTIZERS, MULTIROW_KERNELS
from embedkit.kernels.cpu.threads import get_num_threads
from embedkit.quant import QUANT_TYPES, types_with
from embedkit.quant.registry import CPU_INT16, CPU_MATVEC, CPU_PACKED

# Decode kernels with float32 activations, for types without integer ones (registry path cpu.matvec).
MATVECS = {
    t: getattr(matvec_kquants if QUANT_TYPES[t].block_size == 256 else matvec_legacy,
               f"matvec_{QUANT_TYPES[t].kernel_suffix}")
    for t in types_with(CPU_MATVEC)
}  # fmt: skip

# Decode kernels with integer activations (path cpu.int16): x quantized to int16 blocks of 32 once per matvec
# (`matvec_int8.quantize_activations16`), integer block dots, float accumulators; within ~1e-5 of float32
# (tests/test_fidelity.py measures the decode path against a float64 forward). Single thread on Gemma 3
# 270M's 262144x640 Q8_0 head: 18 GB/s vs 3 GB/s for a float32 kernel (benchmarks/RESULTS.md).
INT8_MATVECS = {  # type -> (parallel kernel, serial kernel over a row range)
    t: (getattr(matvec_int8, f"matvec_{QUANT_TYPES[t].kernel_suffix}_i8"),
        getattr(matvec_int8, f"rows_{QUANT_TYPES[t].kernel_suffix}_i8"))
    for t in types_with(CPU_INT16)
}  # fmt: skip

# The same arithmetic for several activation rows at once (a batched decode step of 2..MAX_INT16_ROWS sequences):
# each weight block decoded once for all rows, every row's result bit-identical to its single-row kernel, so a
# sequence decodes the same in any batch. type -> (parallel kernel, serial kernel), activations in
# `multirow_int16.pair_layout`.
INT16_ROWS = {
    t: (multirow_int16.int16_rows_kernel(QUANT_TYPES[t].kernel_suffix),
        multirow_int16.int16_rows_serial(QUANT_TYPES[t].kernel_suffix))
    for t in types_with(CPU_INT16)
}  # fmt: skip
MAX_INT16_ROWS = multirow_int16.GROUPS[-1]
WIDEN_Q5_0 = True  # see _Q5_0_WIDE

# Types with a decode layout repacked once from the GGUF bytes (path cpu.packed: same size, cheaper to decode):
# type -> (whether rows of n_cols have it, pack(rows) -> packed, (parallel, serial) kernels).
# Q5_0 (Qwen2.5's gate/up/q/o): 14.6 -> 25 GB/s on two threads; Q4_1 (SmolLM2): 102.6 -> 108.7 tok/s decode
# (same process, alternating). Both give bit-identical results (q5_0_packed.py, q4_1_packed.py).
_PACKED_MODULES = {GGMLType.Q5_0: q5_0_packed, GGMLType.Q4_1: q4_1_packed}
PACKED_MATVECS = {
    t: (m.can_pack, getattr(m, f"pack_{QUANT_TYPES[t].kernel_suffix}"),
        (getattr(m, f"matvec_{QUANT_TYPES[t].kernel_suffix}_packed"),
         getattr(m, f"rows_{QUANT_TYPES[t].kernel_suffix}_packed")))
    for t in types_with(CPU_PACKED)
    for m in (_PACKED_MODULES[t],)
}  # fmt: skip

# Weights smaller than this run the int8 decode kernels on the calling thread. Gemma 3 270M decode, 2 threads,
# idle dev VM: 75.0 tok/s with 256 KiB, 72.9 with 0 (every call parallel), 65.4 with 4 MiB (only the output
# head parallel). With the second core busy, each parallel launch can stall for milliseconds (an empty prange
# took 3.7-12 ms there) and the 4 MiB setting did far better (25.6 tok/s vs 1.1 all-parallel); use
# EMBEDKIT_THREADS=1 on a loaded machine.
# 2026-11-25 night, same process alternating (best of 4 x 128 tokens): 128 KiB vs 256 KiB gave SmolLM2 112.4 vs
# 106.9 tok/s (its 576x576 Q4_1 attn_q/o, 199 KiB, now parallel), Gemma 3 85.1 vs 82.5, Qwen2.5 49.5 vs 49.6;
# 64 KiB no better. A parallel launch (Numba's omp layer) costs ~2 us on the idle VM.
PARALLEL_MIN_BYTES = 128 << 10

# Up to this many tokens, run the fused matvec once per token (types without the small-batch kernel); more, use
# dequantized tiles + BLAS.
MAX_MATVEC_TOKENS = 4
# From a type's first token count (`multirow_from`) to MAX_MULTIROW_TOKENS tokens, types with a row decoder (registry
# path cpu.multirow) run `matmul_multirow`: each weight block is dequantized once for all the tokens. Types with
# int16 kernels take it only above MAX_INT16_ROWS tokens (2..MAX_INT16_ROWS run `multirow_int16`, a batched decode
# step); it beats the tiles for short prompts (a server's requests): SmolLM2's Q4_1 1536x576 at 32 / 64 / 128 tokens
# 0.97 / 1.78 / 3.60 ms against 1.99 / 2.33 / 3.16, Qwen2.5's Q5_0 4864x896 5.5 / 9.1 / 22.5 against 7.8 / 10.6 /
# 18.7 (loaded 2-core VM, 2026-12-07); with more threads the kernel gains more (the tiles are dequantized on one).
MIN_MULTIROW_TOKENS = 3
MAX_MULTIROW_TOKENS = 64
# Tokens up to which a decode matmul skips the backend's per-call validation (`backend.cpu`).
MAX_DECODE_TOKENS = max(MAX_MATVEC_TOKENS, MAX_MULTIROW_TOKENS)
# Float32 bytes of one dequantized tile of W (8 MiB: 512 rows of 4096; larger tiles gave BLAS more room).
# Tiles are dequantized on the calling thread: switching between Numba's and OpenBLAS's thread pools for
# every tile cost milliseconds (spinning BLAS workers), more than the dequantization itself. Splitting blocks of W
# rows over the kernel threads with BLAS at one thread in each was tried: it sped up Qwen2.5's and SmolLM2's 512-token
# prompts by ~30% but slowed Gemma 3's by ~35% (two one-thread OpenBLAS calls at once ran no faster than one after
# the other on this host), so the tiles stay on one thread and BLAS gets every core.
TILE_BYTES = 8 << 20


def integer_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One token's activations for the integer decode kernels: (xq int16, xd, xsum) in blocks of 32, the same
    format for every weight type."""
    n = x.shape[0]
    xd = np.empty(n // 32, dtype=np.float32)
    xsum = np.empty(n // 32, dtype=np.float32)
    xq = np.empty(n, dtype=np.int16)
    matvec_int8.quantize_activations16(x, xq, xd, xsum)
    return xq, xd, xsum


def decode_layout(rows: np.ndarray, t: GGMLType, n_cols: int) -> np.ndarray | None:
    """W's bytes repacked for the decode kernels (a new array, made once per weight and passed back as
    `packed`), or None where its type or row length has no such layout."""
    entry = PACKED_MATVECS.get(t)
    if entry is None or not entry[0](n_cols):
        return None
    return entry[1](rows)


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


def _int16_rows(n_tokens: int, t: GGMLType, n_cols: int) -> bool:
    """Whether n_tokens rows of x against a weight of type t take the several-row int16 kernel."""
    return 2 <= n_tokens <= MAX_INT16_ROWS and t in INT16_ROWS and n_cols % QUANT_TYPES[t].block_size == 0


# Q5_0 weights as Q8_0 bytes for the several-row kernel (`multirow_int16.q5_0_as_q8_0`), made on a weight's first
# batched step (~3 ms for a 4864x896 weight) and kept while its rows array lives: id(rows) -> (weak reference to
# rows, the Q8_0 copy). A batched step is compute-bound, so the copy's 55% more bytes cost less than Q5_0's decode:
# 8-row steps 4.5% (Gemma 3 270M) and 3.6-6% (Qwen2.5-Coder-0.5B, whose Q5_0 gate/up were 36% of a step) less CPU
# time, same tokens. It holds the Q5_0 bytes again x 34/22 once batching (~66 MB and ~270 MB for those two):
# WIDEN_Q5_0 = False trades that back.
_Q5_0_WIDE: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _q5_0_wide(rows: np.ndarray) -> np.ndarray:
    """The Q8_0 copy of Q5_0 `rows`, made on first use."""
    key = id(rows)
    hit = _Q5_0_WIDE.get(key)
    if hit is None or hit[0]() is not rows:
        wide = multirow_int16.q5_0_as_q8_0(np.ascontiguousarray(rows))
        hit = _Q5_0_WIDE[key] = (weakref.ref(rows, lambda _, key=key: _Q5_0_WIDE.pop(key, None)), wide)
    return hit[1]


def _int16_rows_matmul(
    acts: tuple[np.ndarray, np.ndarray, np.ndarray], n_tokens: int, rows: np.ndarray, t: GGMLType
) -> np.ndarray:
    """y [n_tokens, n_rows] from the several-row int16 kernel of type t, x in `multirow_int16.pair_layout`."""
    if t == GGMLType.Q5_0 and WIDEN_Q5_0:
        rows, t = _q5_0_wide(rows), GGMLType.Q8_0
    y = np.empty((acts[2].shape[1], rows.shape[0]), dtype=np.float32)
    # the work of a weight byte grows with the pairs of rows it meets: a batch's small weights (Qwen2.5's 128-row
    # k and v, 79 and 122 KiB) are worth a parallel launch at 4 and 8 rows
    parallel = rows.nbytes * (y.shape[0] // 2) >= PARALLEL_MIN_BYTES and get_num_threads() > 1
    INT16_ROWS[t][0 if parallel else 1](rows, *acts, y)
    return y[:n_tokens]


def multirow_from(t: GGMLType) -> int:
    """The fewest tokens for which a weight of type t takes the small-batch (float32) kernel."""
    return MAX_INT16_ROWS + 1 if t in INT16_ROWS else MIN_MULTIROW_TOKENS


def matvec_tokens(t: GGMLType) -> int:
    """The most tokens that run the integer decode kernels (one fused matvec per token, or the several-row int16
    kernel) against a weight of type t."""
    if t in INT16_ROWS:
        return MAX_INT16_ROWS
    return multirow_from(t) - 1 if t in MULTIROW_KERNELS else MAX_MATVEC_TOKENS


def _multirow(n_tokens: int, t: GGMLType) -> bool:
    """Whether `matmul_rows` takes the small-batch kernel for n_tokens rows of x against a weight of type t."""
    return t in MULTIROW_KERNELS and multirow_from(t) <= n_tokens <= MAX_MULTIROW_TOKENS


def matmul_packed(
    acts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], packed: np.ndarray, t: GGMLType, n_rows: int
) -> np.ndarray:
    """y [n_tokens, n_rows] of a weight in its decode layout `packed` (type t; rows of several weights of one
    type may be stacked in it) against one token's `integer_activations` each: one kernel launch."""
    return _integer_matvec(packed, PACKED_MATVECS[t][2], acts, n_rows)


def matmul_rows(
    x: np.ndarray, rows: np.ndarray, t: GGMLType, n_cols: int, packed: np.ndarray | None = None
) -> np.ndarray:
    """x float32 [n_tokens, n_cols] @ W.T for W = `rows` (uint8 [n_rows, row_bytes] of type t); `packed`, W's
    `decode_layout` if it has one, serves decode."""
    n_tokens = x.shape[0]
    n_rows = rows.shape[0]
    if _int16_rows(n_tokens, t, n_cols):
        return _int16_rows_matmul(multirow_int16.pair_layout(x), n_tokens, rows, t)
    if _multirow(n_tokens, t):
        y = np.empty((n_tokens, n_rows), dtype=np.float32)
        MULTIROW_KERNELS[t](rows, x, y)
        return y
    if n_tokens <= matvec_tokens(t) and packed is not None:
        acts = [integer_activations(x[i]) for i in range(n_tokens)]
        return _integer_matvec(packed, PACKED_MATVECS[t][2], acts, n_rows)
    if t == GGMLType.F32:
        return x @ rows.view(np.float32).T
    int_kernels = INT8_MATVECS.get(t)
    if int_kernels is not None and n_tokens <= matvec_tokens(t):
        return _integer_matvec(rows, int_kernels, [integer_activations(x[i]) for i in range(n_tokens)])
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
    once (int16 activations have one format for every type)."""
    n_tokens = x.shape[0]
    if n_tokens > 1 and all(_int16_rows(n_tokens, t, n_cols) for _, t, _ in weights):
        pairs = multirow_int16.pair_layout(x)
        return [_int16_rows_matmul(pairs, n_tokens, rows, t) for rows, t, _ in weights]
    if any(n_tokens > matvec_tokens(t) for _, t, _ in weights):
        return [matmul_rows(x, rows, t, n_cols, packed) for rows, t, packed in weights]
    acts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    out = []
    for rows, t, packed in weights:
        kernels = PACKED_MATVECS[t][2] if packed is not None else INT8_MATVECS.get(t)
        if kernels is None:
            out.append(matmul_rows(x, rows, t, n_cols))
            continue
        if acts is None:
            acts = [integer_activations(x[i]) for i in range(n_tokens)]
        out.append(_integer_matvec(packed if packed is not None else rows, kernels, acts, rows.shape[0]))
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
        numba.set_num_threads(1)
        try:
            dequant(rows[r0:r1], w)
        finally:
            numba.set_num_threads(n_threads)
        y[:, r0:r1] = x @ w.T
    return y
