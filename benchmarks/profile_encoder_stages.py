"""Where a GPU encoder layer's time goes (issue 25): each kernel of `embedkit.kernels.cuda.encoder` and
`encoder_attention` timed alone with CUDA events at a BERT shape, beside torch's float16 pieces (cuBLAS GEMM,
SDPA attention) on the same arrays' shapes, so the stage that holds the gap to torch shows at once.

The layer total counts the default path (the tensor-core flash attention of `encoder_flash`, version 1, 4 warps
a block, 64-key tiles; bias + GELU four float16 a thread; residual + LayerNorm on a float16 residual stream); rows
marked [alt] are the other choices, timed for comparison: the flash kernel's version 2 (128 keys staged a pass;
benchmarks/kernels/encoder_flash_v2.py),
8 warps, 32-key tiles, the Numba CUDA-core attention kernel, attention on batched cuBLAS GEMMs (with its key-bias
GEMM) and its variants, bias + GELU one element a thread or two rows a step, LayerNorm reading and writing a
float32 residual stream too.

    python benchmarks/profile_encoder_stages.py [--batch 256] [--seq 128] [--shape minilm|base]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"minilm": (384, 12, 1536), "base": (768, 12, 3072)}


def load_bench_kernel(name: str):
    """benchmarks/kernels/<name>.py (a kernel kept for comparison), loaded by its path (a `kernels` package
    installed in the environment would shadow the folder as a namespace package)."""
    import importlib.util

    path = Path(__file__).parent / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_ms(fn, stream, reps: int = 20) -> float:
    """Median milliseconds of fn() between CuPy events on `stream` (three warm-up calls first)."""
    import cupy

    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    args = ap.parse_args()
    import torch
    from numba import cuda

    from embedkit.backend.cuda import cuda_backend
    from embedkit.kernels.cuda import encoder
    from embedkit.kernels.cuda import encoder_attention as ea
    from embedkit.kernels.cuda.encoder_flash import flash_attention

    v2 = load_bench_kernel("encoder_flash_v2")

    be = cuda_backend()
    stream, cps = be.stream, be._cp_stream
    d, heads, f = SHAPES[args.shape]
    hd = d // heads
    n = args.batch * args.seq
    rng = np.random.default_rng(0)

    def dev(shape, dtype=np.float16, scale=1.0):
        return cuda.to_device((scale * rng.standard_normal(shape)).astype(dtype), stream=stream)

    x = dev((n, d))
    w_qkv, w_o, w_1, w_2 = (
        dev((3 * d, d), scale=0.05),
        dev((d, d), scale=0.05),
        dev((f, d), scale=0.05),
        dev((d, f), scale=0.05),
    )
    qkv, o, h1, h1a, h2 = dev((n, 3 * d)), dev((n, d)), dev((n, f)), dev((n, f)), dev((n, d))
    b3, bd, bf = dev((3 * d,), np.float32), dev((d,), np.float32), dev((f,), np.float32)
    ln_w, ln_b = dev((d,), np.float32), dev((d,), np.float32)
    res, out32, out_lo = dev((n, d), np.float32), cuda.device_array((n, d), np.float32), dev((n, d))
    res_lo = dev((n, d))
    mask = cuda.to_device(np.ones((args.batch, args.seq), np.int32), stream=stream)
    lengths = cuda.to_device(np.full(args.batch, args.seq, np.int32), stream=stream)
    key_u, key_bias = dev((heads, d), scale=0.05), cuda.device_array((heads, n), np.float32)
    scale = 1.0 / np.sqrt(d // heads)

    def attn_gemm(mode: str, chunk_seqs: int | None = None, score_dtype=None):
        """The GEMM attention; chunk_seqs sequences a chunk (None: the default chunking), scores in score_dtype
        (None: the default)."""
        saved = ea.SCORE_CHUNK_BYTES, ea.MIN_CHUNK_SEQUENCES, ea.SCORE_DTYPE
        if chunk_seqs is not None:
            ea.SCORE_CHUNK_BYTES, ea.MIN_CHUNK_SEQUENCES = 0, chunk_seqs
        ea.SCORE_DTYPE = score_dtype or ea.SCORE_DTYPE
        try:
            ea.attention_gemm(qkv, key_bias, b3[2 * d :], lengths, heads, scale, o, be._empty, stream, cps, mode)
        finally:
            ea.SCORE_CHUNK_BYTES, ea.MIN_CHUNK_SEQUENCES, ea.SCORE_DTYPE = saved

    def gelu_one_a_thread():
        encoder.VECTOR_BIAS_ACT = False
        try:
            encoder.bias_act(h1, bf, encoder.ACT_GELU_ERF, h1a, stream)
        finally:
            encoder.VECTOR_BIAS_ACT = True

    pairs_kernel = load_bench_kernel("encoder_bias_act_x2").bias_act4x2_kernel

    def gelu_two_rows_a_step():
        encoder.bias_act(h1, bf, encoder.ACT_GELU_ERF, h1a, stream, kernel4=pairs_kernel)

    chunk = ea.chunk_sequences(args.batch, args.seq, heads)
    mode = "batched" if ea.batched_available() else "strided"
    stages = {
        "gemm qkv": lambda: encoder.gemm(x, w_qkv, qkv, cps),
        "flash attention": lambda: flash_attention(qkv, b3, mask, heads, scale, o, cps),
        "[alt] flash v2": lambda: flash_attention(qkv, b3, mask, heads, scale, o, cps, 4, 64, v2.source(hd)),
        "[alt] flash v2 stage 64": lambda: flash_attention(
            qkv, b3, mask, heads, scale, o, cps, 4, 64, v2.source(hd, 4, 64, 64)
        ),
        "[alt] flash v2 8 warps": lambda: flash_attention(qkv, b3, mask, heads, scale, o, cps, 8, 64, v2.source(hd, 8)),
        "[alt] flash 8 warps": lambda: flash_attention(qkv, b3, mask, heads, scale, o, cps, 8),
        "[alt] flash 32-key tiles": lambda: flash_attention(qkv, b3, mask, heads, scale, o, cps, 4, 32),
        "[alt] fused attention": lambda: encoder.attention(qkv, b3, mask, heads, scale, o, stream),
        "[alt] gemm key bias": lambda: encoder.gemm(key_u, x, key_bias, cps),
        f"[alt] attn gemm {mode} {chunk}": lambda: attn_gemm(mode),
        "[alt] attn gemm strided": lambda: attn_gemm("strided"),
        "[alt] attn gemm 16 seqs": lambda: attn_gemm(mode, 16),
        "[alt] attn gemm 64 seqs": lambda: attn_gemm(mode, 64),
        "[alt] attn gemm 1 chunk": lambda: attn_gemm(mode, args.batch),
        "[alt] attn gemm f16 score": lambda: attn_gemm(mode, None, np.float16),
        "gemm out": lambda: encoder.gemm(o, w_o, h2, cps),
        "add+layernorm": lambda: encoder.add_norm(h2, bd, res_lo, ln_w, ln_b, 1e-12, None, out_lo, stream),
        "[alt] add+layernorm f32 res": lambda: encoder.add_norm(h2, bd, res, ln_w, ln_b, 1e-12, out32, out_lo, stream),
        "gemm ffn up": lambda: encoder.gemm(out_lo, w_1, h1, cps),
        "bias+gelu": lambda: encoder.bias_act(h1, bf, encoder.ACT_GELU_ERF, h1a, stream),
        "[alt] bias+gelu 1-wide": gelu_one_a_thread,
        "[alt] bias+gelu 2 rows a step": gelu_two_rows_a_step,
        "gemm ffn down": lambda: encoder.gemm(h1a, w_2, h2, cps),
        "add+layernorm 2": lambda: encoder.add_norm(h2, bd, res_lo, ln_w, ln_b, 1e-12, None, out_lo, stream),
    }
    print(f"{torch.cuda.get_device_name()}; {args.shape} shape d={d} heads={heads} ffn={f}; "
          f"batch {args.batch} x {args.seq} = {n} tokens; ms per layer stage (median of 20)")  # fmt: skip
    total = 0.0
    for name, fn in stages.items():
        try:
            ms = timed_ms(fn, cps)
        except Exception as e:  # one stage failing (a cuBLAS status) leaves the rest measured
            print(f"  embedkit {name:24s}   failed: {e}")
            continue
        total += 0 if name.startswith("[alt]") else ms
        print(f"  embedkit {name:24s} {ms:8.3f} ms")
    print(f"  embedkit {'layer total':24s} {total:8.3f} ms")

    tx = torch.randn(n, d, device="cuda", dtype=torch.float16)
    tw = {k: torch.randn(r, c, device="cuda", dtype=torch.float16) * 0.05
          for k, (r, c) in {"qkv": (3 * d, d), "o": (d, d), "1": (f, d), "2": (d, f)}.items()}  # fmt: skip
    th1 = torch.randn(n, f, device="cuda", dtype=torch.float16)
    tq = torch.randn(args.batch, heads, args.seq, d // heads, device="cuda", dtype=torch.float16)
    ts = torch.cuda.current_stream()

    def tt(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(ts)
            fn()
            b.record(ts)
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    tstages = {
        "gemm qkv": lambda: torch.nn.functional.linear(tx, tw["qkv"]),
        "sdpa attention": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tq, tq),
        "gemm out": lambda: torch.nn.functional.linear(tx, tw["o"]),
        "layernorm": lambda: torch.nn.functional.layer_norm(tx, (d,)),
        "gemm ffn up": lambda: torch.nn.functional.linear(tx, tw["1"]),
        "gelu": lambda: torch.nn.functional.gelu(th1),
        "gemm ffn down": lambda: torch.nn.functional.linear(th1, tw["2"]),
    }
    total = 0.0
    for name, fn in tstages.items():
        ms = tt(fn)
        total += ms
        print(f"  torch    {name:16s} {ms:8.3f} ms")
    print(f"  torch layer total       {total:8.3f} ms (one layernorm)")


if __name__ == "__main__":
    main()
