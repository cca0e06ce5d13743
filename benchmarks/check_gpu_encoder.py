"""Where the GPU encoder path departs from the CPU's float32 arithmetic at MiniLM scale (dev tool):
each kernel at full size against numpy, then whole models of 1 and 6 layers on several batch shapes.

    python benchmarks/check_gpu_encoder.py
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rel(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def kernels() -> None:
    from numba import cuda

    from embedkit.kernels.cuda import encoder

    rng = np.random.default_rng(0)
    n, d, f, h = 256 * 128, 384, 1536, 12
    for dt in (np.float32, np.float16):
        x = rng.standard_normal((n, d)).astype(dt)
        w = (rng.standard_normal((3 * d, d)) / 20).astype(dt)
        y = cuda.device_array((n, 3 * d), dtype=dt)
        encoder.gemm(cuda.to_device(x), cuda.to_device(w), y)
        cuda.synchronize()
        ref = x[:300].astype(np.float64) @ w.astype(np.float64).T
        print(f"gemm {dt.__name__}: rel {_rel(y.copy_to_host()[:300], ref):.2e}", flush=True)
        mask = np.ones((256, 128), np.int32)
        mask[5, 60:] = 0
        qkv = rng.standard_normal((n, 3 * d)).astype(dt)
        bias = (0.1 * rng.standard_normal(3 * d)).astype(np.float32)
        out = cuda.to_device(np.full((n, d), np.nan, dt))
        encoder.attention(cuda.to_device(qkv), cuda.to_device(bias), cuda.to_device(mask), h, 1 / math.sqrt(32), out)
        got = out.copy_to_host().reshape(256, 128, d)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_cuda_encoder import _ref_attention

        ref = _ref_attention(qkv.reshape(256, 128, 3 * d)[:8].reshape(-1, 3 * d), bias, mask[:8], h, 1 / math.sqrt(32))
        print(f"attention {dt.__name__}: rel {_rel(got[:8].reshape(-1, d), ref):.2e} nan {np.isnan(got).sum()}",
              flush=True)  # fmt: skip
        a = rng.standard_normal((n, d)).astype(dt)
        res = rng.standard_normal((n, d)).astype(np.float32)
        g = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        b = (0.1 * rng.standard_normal(d)).astype(np.float32)
        o, ol = cuda.device_array((n, d), np.float32), cuda.device_array((n, d), dt)
        encoder.add_norm(cuda.to_device(a), cuda.to_device(b), cuda.to_device(res), cuda.to_device(g),
                         cuda.to_device(b), 1e-12, o, ol)  # fmt: skip
        v = a.astype(np.float64) + b + res
        ref = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-12) * g + b
        print(f"add_norm {dt.__name__}: rel {_rel(o.copy_to_host(), ref):.2e}", flush=True)
        hh = rng.standard_normal((n, f)).astype(dt)
        hb = (0.1 * rng.standard_normal(f)).astype(np.float32)
        go = cuda.device_array((n, f), dt)
        encoder.bias_act(cuda.to_device(hh), cuda.to_device(hb), encoder.ACT_GELU_ERF, go)
        xx = hh.astype(np.float64) + hb
        gelu = 0.5 * xx * (1 + np.vectorize(math.erf)(xx / math.sqrt(2)))
        print(f"bias_gelu {dt.__name__}: rel {_rel(go.copy_to_host(), gelu):.2e}", flush=True)


def models() -> None:
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(1)
    for n_layer in (1, 6):
        path = write_random_gguf(work / f"b{n_layer}.gguf", "bert", *bert_spec(384, n_layer, 12, 1536, 30522, "F32"))
        cpu = load_model(path)
        gpu = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
        for b, t in ((4, 16), (4, 128), (64, 128), (4, 256)):
            ids = rng.integers(1000, 30522, (b, t))
            mask = np.ones((b, t), np.int64)
            mask[1, t // 2 :] = 0
            hc, hg = cpu.encode(ids, mask), gpu.encode(ids, mask)
            real = mask.astype(bool)
            ec, eg = cpu.embed(ids, mask, "mean"), gpu.embed(ids, mask, "mean")
            cos = (ec * eg).sum(1) / np.linalg.norm(ec, axis=1) / np.linalg.norm(eg, axis=1)
            print(f"layers {n_layer} {b}x{t} {os.environ.get('EMBEDKIT_GPU_PRECISION')}: hidden rel "
                  f"{_rel(hg[real], hc[real]):.2e} min cos {cos.min():.6f}", flush=True)  # fmt: skip


def corruption() -> None:
    """Does a large batch change anything it should not (weights, later results)?"""
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    if os.environ.get("BENCH_ORDER"):  # the CUDA backend without graphs first, as bench_gpu.py makes it
        from embedkit.backend.cuda import cuda_backend

        cuda_backend()
    work = Path(tempfile.mkdtemp())
    path = write_random_gguf(work / "b.gguf", "bert", *bert_spec(384, 2, 12, 1536, 30522, "F32"))
    cpu = load_model(path)
    gpu = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
    rng = np.random.default_rng(2)
    small = (rng.integers(1000, 30522, (8, 128)), np.ones((8, 128), np.int64))
    ref = cpu.embed(*small, "mean")

    def cos() -> float:
        e = gpu.embed(*small, "mean")
        return float(((ref * e).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(e, axis=1)).min())

    def snapshot() -> dict:
        out = {}
        for i, layer in enumerate(gpu.layers):
            for k, w in vars(layer).items():
                d = w.data
                arrs = [d] if not hasattr(d, "views") else [d.views[0]]
                for v in getattr(d, "encoder_cache", {}).values():
                    arrs.append(v[1])
                for j, a in enumerate(arrs):
                    out[f"{i}.{k}.{j}"] = a.copy_to_host()
        return out

    print(f"corruption: fresh cos {cos():.6f}", flush=True)
    before = snapshot()
    shapes = ((256, 128),) if os.environ.get("ONE_BATCH") else ((256, 128), (64, 256), (256, 8))
    for b, t in shapes:
        big = (rng.integers(1000, 30522, (b, t)), np.ones((b, t), np.int64))
        gpu.embed(*big, "mean")
        after = snapshot()
        changed = [k for k in before if not np.array_equal(before[k], after[k], equal_nan=True)]
        print(f"corruption: after {b}x{t}: cos {cos():.6f}; changed {changed[:12]} ({len(changed)})", flush=True)
        before = snapshot()



def timing() -> None:
    """Device time of each float16 kernel of one MiniLM layer at 256 x 128 tokens (median of 20, events)."""
    import cupy
    from numba import cuda

    from embedkit.kernels.cuda import encoder

    rng = np.random.default_rng(3)
    n, d, f, h = 256 * 128, 384, 1536, 12
    f16 = np.float16

    def dev(shape, scale=1.0, dt=f16):
        return cuda.to_device((scale * rng.standard_normal(shape)).astype(dt))

    x, wqkv, wo, wu, wd = dev((n, d)), dev((3 * d, d), 0.05), dev((d, d), 0.05), dev((f, d), 0.05), dev((d, f), 0.05)
    qkv, att, y, hu, hg = dev((n, 3 * d)), dev((n, d)), dev((n, d)), dev((n, f)), dev((n, f))
    b3, bd, bf = dev((3 * d,), 0.1, np.float32), dev((d,), 0.1, np.float32), dev((f,), 0.1, np.float32)
    res, o32 = dev((n, d), 1.0, np.float32), dev((n, d), 1.0, np.float32)
    mask = cuda.to_device(np.ones((256, 128), np.int32))
    ops = {
        "gemm qkv": lambda: encoder.gemm(x, wqkv, qkv),
        "attention": lambda: encoder.attention(qkv, b3, mask, h, 0.17, att),
        "gemm out": lambda: encoder.gemm(att, wo, y),
        "add_norm": lambda: encoder.add_norm(y, bd, res, bd, bd, 1e-12, o32, x),
        "gemm up": lambda: encoder.gemm(x, wu, hu),
        "bias_gelu": lambda: encoder.bias_act(hu, bf, encoder.ACT_GELU_ERF, hg),
        "gemm down": lambda: encoder.gemm(hg, wd, y),
    }
    total = 0.0
    for name, fn in ops.items():
        fn()
        cuda.synchronize()
        times = []
        for _ in range(20):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(cupy.cuda.get_elapsed_time(a, b))
        ms = float(np.median(times))
        total += ms
        print(f"timing {name}: {ms:.3f} ms", flush=True)
    print(f"timing one layer: {total:.3f} ms; six layers {6 * total:.2f} ms per 256 x 128 batch", flush=True)


if __name__ == "__main__":
    if "--corruption" in sys.argv:
        corruption()
    elif "--timing" in sys.argv:
        timing()
    else:
        if "--models" not in sys.argv:
            kernels()
        models()

