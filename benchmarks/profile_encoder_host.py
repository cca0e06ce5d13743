"""GPU encoder, host side and A/B (issue 25): host microseconds to *launch* each encoder op (no wait for the GPU),
then embeddings/s of the float16 encoder with the tensor-core flash attention (both versions), with the Numba
attention kernel, and torch float16, interleaved over several rounds (same process, same minutes), on
`bench_gpu.py`'s random MiniLM-shaped model and batches (256 x 128, and its mixed-length set).

    python benchmarks/profile_encoder_host.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def launch_us(fn, stream, n: int = 200) -> float:
    """Host microseconds per call of fn() (launch only), the stream drained before and after."""
    fn()
    stream.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = time.perf_counter() - t
    stream.synchronize()
    return 1e6 * host / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import bench_gpu
    from numba import cuda
    from profile_encoder_stages import load_bench_kernel

    import embedkit.backend.cuda_encoder as cuda_encoder
    from embedkit.backend.cuda import cuda_backend
    from embedkit.backend.placement import make_placement
    from embedkit.kernels.cuda import encoder, encoder_flash
    from embedkit.kernels.cuda.encoder_flash import flash_attention
    from embedkit.models import load_model
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    be = cuda_backend()
    stream, cps = be.stream, be._cp_stream
    rng = np.random.default_rng(0)
    b, t, d, heads = 256, 128, 384, 12
    n = b * t
    qkv = cuda.to_device(rng.standard_normal((n, 3 * d)).astype(np.float16), stream=stream)
    o = cuda.to_device(np.zeros((n, d), np.float16), stream=stream)
    y = cuda.to_device(np.zeros((n, d), np.float16), stream=stream)
    bias = cuda.to_device(rng.standard_normal(3 * d).astype(np.float32), stream=stream)
    mask = cuda.to_device(np.ones((b, t), np.int32), stream=stream)
    w = cuda.to_device((0.05 * rng.standard_normal((d, d))).astype(np.float16), stream=stream)
    ln = cuda.to_device(np.ones(d, np.float32), stream=stream)
    scale = 1.0 / np.sqrt(d // heads)
    ops = {
        "flash attention (CuPy launch)": lambda: flash_attention(qkv, bias, mask, heads, scale, o, cps),
        "numba attention": lambda: encoder.attention(qkv, bias, mask, heads, scale, o, stream),
        "gemm (cuBLAS via CuPy)": lambda: encoder.gemm(o, w, y, cps),
        "add+layernorm (numba)": lambda: encoder.add_norm(o, None, o, ln, ln, 1e-12, None, o, stream),
        "bias+gelu (numba)": lambda: encoder.bias_act(o, bias[:d], encoder.ACT_GELU_ERF, o, stream),
    }
    print("host us per launch (no wait):")
    for name, fn in ops.items():
        print(f"  {name:32s} {launch_us(fn, cps):8.1f} us")

    work = Path(tempfile.mkdtemp())
    path = work / "bert-minilm.gguf"
    write_random_gguf(path, "bert", *bert_spec(384, 6, 12, 1536, 30522, "F32"))
    os.environ["EMBEDKIT_GPU_PRECISION"] = "float16"
    model = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
    full = [(rng.integers(1000, 30522, (b, t)), np.ones((b, t), dtype=np.int64))]
    mixed = bench_gpu._mixed_batches(4096, b, 30522)
    n_mixed = sum(len(ids) for ids, _ in mixed)

    v2 = load_bench_kernel("encoder_flash_v2")

    def ours(flash: int, ids, m):
        """flash 0: the Numba attention kernel; 1: the engine's tensor-core kernel; 2: the variant kept in
        benchmarks/kernels/ (swapped in as the source the engine's launcher compiles)."""
        saved = cuda_encoder.FLASH_ATTENTION, encoder_flash.source
        cuda_encoder.FLASH_ATTENTION = flash > 0
        if flash == 2:
            encoder_flash.source = lambda hd, warps, key_tile: v2.source(hd, warps, key_tile)
        try:
            return bench_gpu._embedkit_embed(model, ids, m)
        finally:
            cuda_encoder.FLASH_ATTENTION, encoder_flash.source = saved

    sides = {
        "embedkit f16 flash v2": functools.partial(ours, 2),
        "embedkit f16 flash v1": functools.partial(ours, 1),
        "embedkit f16 numba attn": functools.partial(ours, 0),
        "torch f16": functools.partial(bench_gpu._torch_embed, bench_gpu._torch_bert(path, "float16")),
    }
    got: dict = {k: ([], []) for k in sides}
    for r in range(args.rounds):
        for name, fn in sides.items():
            f = b / bench_gpu._timed_set(fn, full, 5)
            m = n_mixed / bench_gpu._timed_set(fn, mixed, 2)
            got[name][0].append(f)
            got[name][1].append(m)
            print(f"  round {r}: {name:24s} {f:9,.0f} full {m:9,.0f} mixed emb/s", flush=True)
    print("| side | 256 x 128 emb/s (median of rounds) | mixed emb/s |")
    print("|---|---:|---:|")
    for name, (f, m) in got.items():
        print(f"| {name} | {statistics.median(f):,.0f} | {statistics.median(m):,.0f} |")


if __name__ == "__main__":
    main()
