"""Kernel speed: embedkit's fused matvec (decode) and tiled batch matmul vs numpy, per ggml type.

For each type: matvec at 4096x4096 and 14336x4096 in GB/s of weight bytes streamed (the decode
bound is memory bandwidth, measured in the same run with a large numpy copy), the same matvec on the
weights repacked once into a decode layout where the type has one ("packed", Q5_0; what the CPU backend
runs in decode), and a batch-512
matmul in GFLOP/s. The numpy column dequantizes W with gguf-py's numpy code then calls np.dot
(BLAS) on float32; "np.dot only" is BLAS on an already-float32 W (the batch ceiling).

Run: nice python benchmarks/bench_kernels.py [--threads N] [--types Q8_0,Q4_K] [--repeat 5]
The numba cache must be warm for timings (the script runs every kernel once before timing).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from embedkit import kernels
from embedkit.gguf.types import GGMLType, ggml_type, type_info
from embedkit.kernels.cpu.matmul import decode_layout, matmul_rows
from embedkit.quant import QUANT_TYPES, names_with
from embedkit.quant.registry import CPU_QUANTIZE

TYPES = [q.name for q in QUANT_TYPES.values()]
QUANTIZABLE = set(names_with(CPU_QUANTIZE))


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def weights(rng: np.random.Generator, name: str, n_rows: int, n_cols: int) -> np.ndarray:
    """Raw GGUF bytes for a random (n_rows, n_cols) tensor of type `name`."""
    if name in QUANTIZABLE:
        x = (rng.standard_normal((n_rows, n_cols)) * 0.02).astype(np.float32)
        return kernels.quantize(x, name)
    info = type_info(name)
    blocks = rng.integers(0, 256, (n_rows * n_cols // info.block_size, info.type_size), dtype=np.uint8)
    for o in QUANT_TYPES[GGMLType[name]].f16_scales:  # finite scales for the types without a quantizer
        scales = (rng.standard_normal(len(blocks)) * 1e-3).astype(np.float16)
        blocks[:, o : o + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(n_rows, -1)


def numpy_dequantize(raw: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    if name == "F32":
        return raw.view(np.float32).reshape(shape)
    if name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return quants.dequantize(raw.reshape(shape[0], -1), GGMLQuantizationType[name]).reshape(shape)


def copy_bandwidth(n_bytes: int = 1 << 29) -> tuple[float, float]:
    """(copy GB/s counting read+write, read-only GB/s of a sum) over n_bytes."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t_copy = best_of(lambda: np.copyto(dst, src), 5)
    t_read = best_of(lambda: src.sum(), 5)
    return 2 * n_bytes / t_copy / 1e9, n_bytes / t_read / 1e9


def bench_row(rng: np.random.Generator, name: str, n_rows: int, n_cols: int, args: argparse.Namespace) -> str:
    """One table row: matvec GB/s (and batch GFLOP/s for the 4096-row shape), embedkit vs numpy."""
    raw = weights(rng, name, n_rows, n_cols)
    shape = (n_rows, n_cols)
    x1 = rng.standard_normal((1, n_cols)).astype(np.float32)
    kernels.matmul(x1, raw, name, shape)  # compile / load the numba cache
    mv = raw.nbytes / best_of(lambda: kernels.matmul(x1, raw, name, shape), args.repeat) / 1e9
    rows, t = raw.reshape(n_rows, -1), ggml_type(name)
    packed = decode_layout(rows, t, n_cols)
    packed_mv = float("nan")
    if packed is not None:
        matmul_rows(x1, rows, t, n_cols, packed)
        packed_mv = raw.nbytes / best_of(lambda: matmul_rows(x1, rows, t, n_cols, packed), args.repeat) / 1e9
    np_mv = float("nan")
    if not args.no_numpy:
        np_mv = raw.nbytes / best_of(lambda: numpy_dequantize(raw, name, shape) @ x1[0], 1) / 1e9
    row = f"{name:7} {n_rows:>5}x{n_cols:<5} {raw.nbytes / 1e6:6.1f} | {mv:11.2f} {packed_mv:7.2f} {np_mv:10.2f} | "
    if n_rows != 4096:
        return row
    xb = rng.standard_normal((args.batch, n_cols)).astype(np.float32)
    flops = 2.0 * args.batch * n_rows * n_cols
    kernels.matmul(xb, raw, name, shape)
    t_b = best_of(lambda: kernels.matmul(xb, raw, name, shape), max(2, args.repeat // 2))
    wf = kernels.dequantize(raw, name, shape)
    t_dot = best_of(lambda: xb @ wf.T, 2)
    np_b = float("nan")
    if not args.no_numpy:
        np_b = flops / best_of(lambda: xb @ numpy_dequantize(raw, name, shape).T, 1) / 1e9
    return row + f"{flops / t_b / 1e9:13.1f} {np_b:7.1f} {flops / t_dot / 1e9:11.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default EMBEDKIT_THREADS / all)")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy reference columns")
    args = ap.parse_args()

    threads = kernels.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus; kernel threads: {threads}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")  # fmt: skip
    copy_gbs, read_gbs = copy_bandwidth()
    print(f"memory: numpy copy {copy_gbs:.1f} GB/s (read+write), numpy sum {read_gbs:.1f} GB/s (read)\n")

    head = f"{'type':7} {'shape':>11} {'MB':>6} | {'matvec GB/s':>11} {'packed':>7} {'numpy GB/s':>10} | "
    head += f"{'b' + str(args.batch) + ' GFLOP/s':>13} {'numpy':>7} {'np.dot only':>11}"
    print(head)
    print("-" * len(head))
    for name in args.types.split(","):
        for n_rows, n_cols in ((4096, 4096), (14336, 4096)):
            print(bench_row(rng, name, n_rows, n_cols, args), flush=True)


if __name__ == "__main__":
    main()
