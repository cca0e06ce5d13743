"""Decode-kernel settings measured end to end: the device time of one recorded decode step (a CUDA
graph) of a 32-layer Mistral-7B-shaped random model, for each matvec layout (rows per warp, words
per lane per trip, warps per block, split-K threshold) and RMSNorm layout (threads per block of the many-block decode
norm, 0 for one block per row), all in one process on the same model.

Each setting re-records the graph, then times 20 graph launches between CUDA events (weights stream
from device memory: a layer's matrices are read once per step, far more than the L2 holds). The
logits of a fixed step are compared with the first setting's (every setting computes the same sums
in a different order, so they differ by float32 rounding only).

    python benchmarks/tune_gpu_decode.py [--types Q4_0,Q8_0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # (rows per warp, words per lane per trip, warps per block, RMSNorm split threads,
    # split-K below this many warps a launch)
    "Q4_0": [(4, 2, 4, 256, 4096), (4, 2, 4, 256, 0), (4, 2, 4, 256, 2048), (4, 2, 8, 256, 8192),
             (4, 2, 8, 256, 4096), (2, 4, 4, 256, 4096), (4, 4, 4, 256, 4096), (4, 2, 4, 0, 4096)],
    "Q8_0": [(1, 4, 4, 256, 4096), (1, 4, 4, 256, 0), (1, 4, 4, 256, 8192), (2, 4, 4, 256, 4096),
             (2, 2, 4, 256, 4096), (1, 4, 8, 256, 8192)],
}  # fmt: skip


def measure(m, gpu, toks, setting) -> tuple[float, float, np.ndarray]:
    """(graph ms per step, wall ms per step over 32 steps, logits of one step) under `setting`."""
    import cupy

    from embedkit.kernels.cuda import norms, quant_fast

    gtype = m.layers[0].wq.data.fast
    rows, words, warps, norm_threads, split_min = setting
    quant_fast._MV_ROWS[gtype], quant_fast._MV_WORDS[gtype] = rows, words
    quant_fast.MV_WARPS, quant_fast.MV_SPLIT_MIN_WARPS = warps, split_min
    norms.SPLIT_THREADS = norm_threads
    gpu.steps.forget()
    state = m.new_state(256)
    for i in range(4):  # records, then replays
        m.forward(toks[i : i + 1], state, i)
    logits = m.forward(toks[4:5], state, 4)
    cs = gpu._cp_stream
    cs.synchronize()
    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    a.record(cs)
    for _ in range(20):
        gpu.steps.graph.graph.launch(cs)
    b.record(cs)
    b.synchronize()
    graph_ms = cupy.cuda.get_elapsed_time(a, b) / 20
    t = time.perf_counter()
    for i in range(32):
        m.forward(toks[5 + i : 6 + i], state, 5 + i)
    wall_ms = (time.perf_counter() - t) / 32 * 1e3
    return graph_ms, wall_ms, logits


def host_breakdown(m, gpu, toks, steps: int = 64) -> dict:
    """Median host milliseconds of a replayed decode step: forward entry to graph launch, to the end
    of the Python replay (flush), and to forward's return (logits on the host)."""
    marks: dict = {}
    push, flush = gpu._push_inputs, gpu.flush

    def timed_push() -> None:
        marks.setdefault("launch", time.perf_counter())
        push()

    def timed_flush() -> None:
        marks.setdefault("flush", time.perf_counter())
        flush()

    gpu._push_inputs, gpu.flush = timed_push, timed_flush
    rows = []
    try:
        state = m.new_state(256)
        for i in range(steps):
            marks.clear()
            t0 = time.perf_counter()
            m.forward(toks[i % len(toks) : i % len(toks) + 1], state, i)
            end = time.perf_counter()
            if i >= 4:
                rows.append(((marks["launch"] - t0) * 1e3, (marks["flush"] - t0) * 1e3, (end - t0) * 1e3))
    finally:
        del gpu._push_inputs, gpu.flush
    med = np.median(np.array(rows), axis=0)
    return {"to_launch_ms": float(med[0]), "to_flush_ms": float(med[1]), "step_ms": float(med[2])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q8_0")
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", tempfile.gettempdir()))
    ap.add_argument("--settings", default="", help='"TYPE:r,w,b,t,s;r,w,b,t,s TYPE:..." instead of the built-in lists')
    args = ap.parse_args()
    for spec in args.settings.split():
        gtype, lists = spec.split(":")
        SETTINGS[gtype] = [tuple(int(v) for v in one.split(",")) for one in lists.split(";")]
    from embedkit.backend.placement import make_placement
    from embedkit.kernels.cuda import norms, quant_fast
    from embedkit.models import load_model
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    defaults = (dict(quant_fast._MV_ROWS), dict(quant_fast._MV_WORDS), quant_fast.MV_WARPS, norms.SPLIT_THREADS,
                quant_fast.MV_SPLIT_MIN_WARPS)  # fmt: skip
    for gtype in args.types.split(","):
        path = Path(args.workdir) / f"mistral-{gtype.lower()}.gguf"
        if not path.exists():
            write_random_gguf(path, "llama", *llama_spec(4096, 32, 32, 8, 14336, 32000, gtype))
        m = load_model(path, make_placement("cuda", -1))
        gpu = m.placement.layer(0)
        toks = np.random.default_rng(0).integers(0, m.params.n_vocab, 64).astype(np.int32)
        print(f"\nMistral-7B shape, {gtype}: graph = device ms of one decode step (20 replays), wall = ms/token")
        print("| rows/warp | words/trip | warps/block | norm split threads | split-K below warps | graph ms | "
              "tok/s (graph) | wall ms | max rel diff |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        ref = None
        for setting in SETTINGS[gtype]:
            graph_ms, wall_ms, logits = measure(m, gpu, toks, setting)
            ref = logits if ref is None else ref
            diff = float(np.abs(logits - ref).max() / np.abs(ref).max())
            print(f"| {' | '.join(map(str, setting))} | {graph_ms:.3f} | {1e3 / graph_ms:.1f} | {wall_ms:.3f} | "
                  f"{diff:.1e} |", flush=True)  # fmt: skip
        quant_fast._MV_ROWS.update(defaults[0])
        quant_fast._MV_WORDS.update(defaults[1])
        quant_fast.MV_WARPS, norms.SPLIT_THREADS, quant_fast.MV_SPLIT_MIN_WARPS = defaults[2:]
        gpu.steps.forget()
        b = host_breakdown(m, gpu, toks)
        print(f"\nhost time of a replayed step at the defaults (median ms): forward entry to graph launch "
              f"{b['to_launch_ms']:.3f}, to the end of the Python replay {b['to_flush_ms']:.3f}, "
              f"to logits on the host {b['step_ms']:.3f}", flush=True)  # fmt: skip
        m = None


if __name__ == "__main__":
    main()
