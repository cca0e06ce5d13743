"""Where one decode step's time goes on the CPU backend: per backend op (matmuls by weight type and shape,
attention, norms, RoPE, elementwise) and the rest (Python, dispatch), beside the whole step.

    PYTHONPATH=. python benchmarks/profile_decode.py [--models smollm2-135m,...] [--threads 2] [--steps 64]

Each op is timed with perf_counter around the backend call (the timer itself costs ~0.2 us a call, counted
in the op); `--clock cpu` times with the calling thread's CPU time instead, which a shared, loaded machine
inflates far less (with --threads 1 every kernel runs on that thread, so it is the whole cost; the CPU-time
timer costs a few us a call under load). "other" is the step's time minus the ops': embedding, the layer loops,
argument handling.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np

from embedkit.backend.cpu import CPUBackend
from embedkit.catalog import resolve_model
from embedkit.generate import Generator, SamplerParams
from embedkit.generate.generator import Timings
from embedkit.gguf import GGMLType

_OPS = ["matmul", "matmuls", "rms_norm", "rope", "attention", "add", "swiglu", "geglu", "mul", "scale",
        "get_rows", "gelu"]


def _label(name: str, args) -> str:
    if name == "matmul":
        w = args[1]
        return f"matmul {GGMLType(w.ggml_type).name} {w.shape[0]}x{w.shape[1]}"
    if name == "matmuls":
        ws = args[1]
        return "matmuls " + "+".join(f"{GGMLType(w.ggml_type).name} {w.shape[0]}x{w.shape[1]}" for w in ws)
    return name


def profile(name: str, threads: int, steps: int, clock=time.perf_counter) -> None:
    """Print the per-op table of `steps` decode steps of model `name`."""
    gen = Generator(resolve_model(name, kind="generate"), n_ctx=1024, n_batch=512, n_threads=threads)
    greedy = SamplerParams(temp=0.0)
    ids = gen.tokenize("The history of computing is a story of ideas meeting machines. " * 4)[:32]
    gen.generate(ids, n_predict=4, sampler=greedy, ignore_eos=True)  # warm-up (JIT caches)
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    originals = {op: getattr(CPUBackend, op) for op in _OPS if hasattr(CPUBackend, op)}
    active = [False]

    def wrap(op, fn):
        def timed(self, *args, **kw):
            if active[0]:
                return fn(self, *args, **kw)
            active[0] = True
            t = clock()
            try:
                return fn(self, *args, **kw)
            finally:
                key = _label(op, args)
                totals[key] += clock() - t
                counts[key] += 1
                active[0] = False
        return timed

    def decode_steps() -> float:
        """ms per step of `steps` greedy decode steps after a 16-token prompt (sampling included)."""
        gen.reset()
        logits = gen._process_prompt(ids[:16], Timings())
        totals.clear()
        counts.clear()
        t = clock()
        for _ in range(steps):
            logits = gen._decode(int(np.argmax(logits)))
        return 1000 * (clock() - t) / steps

    plain_ms = min(decode_steps() for _ in range(3))
    for op, fn in originals.items():
        setattr(CPUBackend, op, wrap(op, fn))
    try:
        step_ms = decode_steps()
    finally:
        for op, fn in originals.items():
            setattr(CPUBackend, op, fn)
    print(f"\n## {name}: {threads} threads, {steps} decode steps, {clock.__name__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"step {plain_ms:.3f} ms untimed (best of 3) ({1000 / plain_ms:.1f} tok/s), {step_ms:.3f} ms with timers")
    print(f"{'op':58} {'calls/step':>10} {'us/call':>9} {'ms/step':>8} {'share':>6}")
    ops_ms = 0.0
    for key in sorted(totals, key=lambda k: -totals[k]):
        ms = 1000 * totals[key] / steps
        ops_ms += ms
        print(f"{key:58} {counts[key] / steps:10.1f} {1e6 * totals[key] / counts[key]:9.1f} {ms:8.3f} "
              f"{ms / step_ms:6.1%}")
    print(f"{'other (Python layer code, embedding, sampling)':58} {'':10} {'':9} {step_ms - ops_ms:8.3f} "
          f"{(step_ms - ops_ms) / step_ms:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: the calling thread's CPU time (thread_time)")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    for name in args.models.split(","):
        profile(name, args.threads, args.steps, clock)


if __name__ == "__main__":
    main()
