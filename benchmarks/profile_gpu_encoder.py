"""Where the GPU encoder's time goes, beside torch float16: wall time and per-kernel device time.

Random-weight BERT-MiniLM-L6 shape (F32 GGUF), one batch of 256 x 128 tokens and 4,096 mixed-length texts in
`embed`'s length-sorted batches (bench_gpu's sets). Sides: embedkit float16 with the flash attention and with
the blas attention (EMBEDKIT_GPU_ATTENTION), and transformers' BertModel in float16, same process, same GPU.
Prints each side's min cosine to the CPU backend's float32 vectors, embeddings/s, and the kernels' device
time by name for the 256 x 128 batch (CUPTI through torch.profiler).

    python benchmarks/profile_gpu_encoder.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import _embedkit_embed, _mixed_batches, _torch_bert, _torch_embed, _with_attention  # noqa: E402
from profile_gpu import _short  # noqa: E402


def kernel_table(fn, label: str, top: int = 14) -> None:
    """Device time per kernel name over one call of fn."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    tot: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if getattr(ev, "device_type", None) is not None and "CUDA" in str(ev.device_type):
            k = _short(ev.name)
            tot[k][0] += ev.device_time_total
            tot[k][1] += 1
    rows = sorted(((k, v[0], v[1]) for k, v in tot.items()), key=lambda r: -r[1])
    print(f"  {label}: kernels {sum(r[1] for r in rows) / 1e3:.2f} ms device")
    for k, us, n in rows[:top]:
        print(f"    {us / 1e3:7.3f} ms {n:5d}x  {k[:90]}")


def wall_ms(fn, batches, reps: int) -> float:
    """Median wall ms to embed every batch (one warm-up pass first)."""
    import torch

    for ids, mask in batches:
        fn(ids, mask)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for ids, mask in batches:
            fn(ids, mask)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    import functools

    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    path = Path(tempfile.mkdtemp()) / "bert-minilm.gguf"
    write_random_gguf(path, "bert", *bert_spec(384, 6, 12, 1536, 30522, "F32"))
    rng = np.random.default_rng(0)
    full = (rng.integers(1000, 30522, (256, 128)), np.ones((256, 128), dtype=np.int64))
    mixed = _mixed_batches(4096, 256, 30522)
    os.environ["EMBEDKIT_GPU_PRECISION"] = "float16"
    model = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
    sides = {
        "embedkit flash": functools.partial(_with_attention, "flash", model),
        "embedkit blas": functools.partial(_with_attention, "blas", model),
        "torch float16": functools.partial(_torch_embed, _torch_bert(path, "float16")),
    }
    cpu = load_model(path)
    checks = [(full[0][:8], full[1][:8]), mixed[0], mixed[-1]]
    checks = [(ids[:8], mask[:8]) for ids, mask in checks]
    refs = [_embedkit_embed(cpu, ids, mask) for ids, mask in checks]
    for name, fn in sides.items():
        cos = []
        for (ids, mask), ref in zip(checks, refs, strict=True):
            got = fn(ids, mask)
            cos.append(float(np.min((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1))))
        wf, wm = wall_ms(fn, [full], 5), wall_ms(fn, mixed, 2)
        print(f"{name}: min cosine to CPU {min(cos):.6f}; 256 x 128 {wf:.2f} ms ({256e3 / wf:,.0f}/s), "
              f"mixed {wm:.1f} ms ({4096e3 / wm:,.0f}/s)", flush=True)  # fmt: skip
        kernel_table(lambda fn=fn: fn(*full), f"{name}, 256 x 128")


if __name__ == "__main__":
    main()
