"""Where one decode step's time goes on the CPU backend: per backend op (matmuls by weight type and shape,
attention, norms, RoPE, elementwise) and the rest (Python, dispatch), beside the whole step.

    PYTHONPATH=. python benchmarks/profile_decode.py [--models smollm2-135m,...] [--threads 2] [--steps 64]
        [--clock wall|cpu] [--rows 1,8]

Each op is timed with perf_counter around the backend call (the timer itself costs ~0.2 us a call, counted
in the op); `--clock cpu` times with the calling thread's CPU time instead, which a shared, loaded machine
inflates far less (with --threads 1 every kernel runs on that thread, so it is the whole cost; the CPU-time
timer costs a few us a call under load). "other" is the step's time minus the ops': embedding, the layer loops,
argument handling.

`--rows B` (B > 1) profiles a continuous-batching step instead: B sequences of a 128-token prompt decoding
together in a `BatchGenerator` (every matmul takes all B rows; attention runs per sequence in one call), with
the sequences' sampling (`accept`) timed as its own row. `--clock cpu` with --threads 1 gives each op's whole cost
on a loaded machine; compare B=1 and B=8 from the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np

from embedkit.backend.cpu import CPUBackend
from embedkit.catalog import resolve_model
from embedkit.generate import BatchGenerator, Generator, SamplerParams
from embedkit.generate.batch_sequence import BatchSequence
from embedkit.generate.generator import Timings
from embedkit.gguf import GGMLType

_OPS = ["matmul", "matmuls", "rms_norm", "rope", "attention", "attention_seqs", "add", "swiglu", "geglu", "mul",
        "scale", "get_rows", "gelu"]


def _label(name: str, args) -> str:
    if name == "matmul":
        w = args[1]
        return f"matmul {GGMLType(w.ggml_type).name} {w.shape[0]}x{w.shape[1]}"
    if name == "matmuls":
        ws = args[1]
        return "matmuls " + "+".join(f"{GGMLType(w.ggml_type).name} {w.shape[0]}x{w.shape[1]}" for w in ws)
    return name


class _OpTimer:
    """Wraps the backend's ops (and a batch's sampling) with the clock while active; totals and calls per label."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.originals = {op: getattr(CPUBackend, op) for op in _OPS if hasattr(CPUBackend, op)}
        self._inside = False

    def _wrap(self, label, fn):
        def timed(obj, *args, **kw):
            if self._inside:
                return fn(obj, *args, **kw)
            self._inside = True
            t = self.clock()
            try:
                return fn(obj, *args, **kw)
            finally:
                key = label(args)
                self.totals[key] += self.clock() - t
                self.counts[key] += 1
                self._inside = False

        return timed

    def __enter__(self) -> _OpTimer:
        for op, fn in self.originals.items():
            setattr(CPUBackend, op, self._wrap(lambda args, op=op: _label(op, args), fn))
        self._accept = BatchSequence.accept
        BatchSequence.accept = self._wrap(lambda args: "accept (sampling, detokenizing, stops)", self._accept)
        return self

    def __exit__(self, *exc) -> None:
        for op, fn in self.originals.items():
            setattr(CPUBackend, op, fn)
        BatchSequence.accept = self._accept

    def clear(self) -> None:
        self.totals.clear()
        self.counts.clear()


def _single_steps(name: str, threads: int, steps: int, clock):
    """A function running `steps` greedy decode steps of a `Generator` after a 16-token prompt: ms per step."""
    gen = Generator(resolve_model(name, kind="generate"), n_ctx=1024, n_batch=512, n_threads=threads)
    greedy = SamplerParams(temp=0.0)
    ids = gen.tokenize("The history of computing is a story of ideas meeting machines. " * 4)[:32]
    gen.generate(ids, n_predict=4, sampler=greedy, ignore_eos=True)  # warm-up (JIT caches)

    def run(timer: _OpTimer | None) -> float:
        gen.reset()
        logits = gen._process_prompt(ids[:16], Timings())
        if timer is not None:
            timer.clear()
        t = clock()
        for _ in range(steps):
            logits = gen._decode(int(np.argmax(logits)))
        return 1000 * (clock() - t) / steps

    return run


def _batch_steps(name: str, threads: int, steps: int, clock, rows: int):
    """A function running `steps` decode steps of `rows` sequences in a `BatchGenerator` (128-token prompts, greedy,
    the steps after every sequence has its first token): ms per step."""
    gen = BatchGenerator(resolve_model(name, kind="generate"), n_ctx=rows * (160 + steps), n_parallel=rows,
                         n_batch=512, n_threads=threads, background=False)  # fmt: skip
    greedy = SamplerParams(temp=0.0)
    ids = gen.tokenize("The history of computing is a story of ideas meeting machines. " * 12)[:128]
    for h in [gen.submit(ids, n_predict=3, sampler=greedy, ignore_eos=True) for _ in range(rows)]:
        h.result()  # warm-up (JIT caches, decode layouts)

    def run(timer: _OpTimer | None) -> float:
        handles = [gen.submit(ids, n_predict=steps + 1, sampler=greedy, ignore_eos=True) for _ in range(rows)]
        while not all(h._seq.tokens for h in handles):
            gen.step()
        if timer is not None:
            timer.clear()
        t = clock()
        gen.run()
        return 1000 * (clock() - t) / steps

    return run


def profile(name: str, threads: int, steps: int, clock=time.perf_counter, rows: int = 1) -> None:
    """Print the per-op table of `steps` decode steps of model `name` (`rows` sequences at once when > 1)."""
    run = _batch_steps(name, threads, steps, clock, rows) if rows > 1 else _single_steps(name, threads, steps, clock)
    plain_ms = min(run(None) for _ in range(3))
    with _OpTimer(clock) as timer:
        step_ms = run(timer)
    totals, counts = timer.totals, timer.counts
    what = f"{rows} sequences (BatchGenerator)" if rows > 1 else "1 sequence (Generator)"
    print(f"\n## {name}: {what}, {threads} threads, {steps} decode steps, {clock.__name__}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"step {plain_ms:.3f} ms untimed (best of 3) ({rows * 1000 / plain_ms:.1f} tok/s), "
          f"{step_ms:.3f} ms with timers")  # fmt: skip
    print(f"{'op':58} {'calls/step':>10} {'us/call':>9} {'ms/step':>8} {'share':>6}")
    ops_ms = 0.0
    for key in sorted(totals, key=lambda k: -totals[k]):
        ms = 1000 * totals[key] / steps
        ops_ms += ms
        print(f"{key:58} {counts[key] / steps:10.1f} {1e6 * totals[key] / counts[key]:9.1f} {ms:8.3f} "
              f"{ms / step_ms:6.1%}")
    print(f"{'other (Python layer code, embedding, scheduler)':58} {'':10} {'':9} {step_ms - ops_ms:8.3f} "
          f"{(step_ms - ops_ms) / step_ms:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: the calling thread's CPU time (thread_time)")
    ap.add_argument("--rows", default="1", help="sequences decoding together, e.g. 1,8 (one table each)")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    for name in args.models.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            profile(name, args.threads, args.steps, clock, rows)


if __name__ == "__main__":
    main()
