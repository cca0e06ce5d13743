"""Where the GPU time goes: per-kernel device time of a prompt forward and of one decode step.

Writes a few-layer Mistral-7B-shaped random model (per-layer figures scale to 32 layers), runs
pp512 and decode steps on the CUDA backend, and prints host wall time against device time
(CuPy events on the backend's stream) and the kernels' total device time by name (CUPTI through
torch.profiler, when torch is there).

    python benchmarks/profile_gpu.py [--layers 4] [--types Q4_0,Q8_0] [--out dir]
"""

from __future__ import annotations

import argparse
import json
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

from bench_gpu import _gc_time  # noqa: E402  (benchmarks/ is not a package)


def _events_ms(be, fn) -> tuple[float, float]:
    """(host wall ms, device ms between events on the backend's stream) of fn()."""
    import cupy

    s = be._cp_stream
    s.synchronize()
    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    t = time.perf_counter()
    a.record(s)
    fn()
    b.record(s)
    b.synchronize()
    return (time.perf_counter() - t) * 1e3, cupy.cuda.get_elapsed_time(a, b)


def _short(name: str) -> str:
    """The last two components of an Itanium-mangled kernel name (numba's), else the name cut to 80."""
    if not name.startswith("_ZN"):
        return name[:80]
    parts, i = [], 3
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        parts.append(name[j : j + n])
        i = j + n
    return ".".join(parts[-2:]) if parts else name[:80]


def _kernel_table(fn, label: str, out_dir: Path | None) -> list[tuple[str, float, int]]:
    """Device time per kernel name over one call of fn (torch.profiler / CUPTI)."""
    try:
        import torch  # noqa: F401
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        print("  (no torch: no per-kernel table)")
        return []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    tot: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if getattr(ev, "device_type", None) is not None and "CUDA" in str(ev.device_type):
            short = _short(ev.name)
            tot[short][0] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            tot[short][1] += 1
    rows = sorted(((k, v[0], v[1]) for k, v in tot.items()), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"  {label}: kernels {total / 1e3:.2f} ms device total")
    for k, us, n in rows[:25]:
        print(f"    {us / 1e3:8.3f} ms {n:6d}x {us / max(n, 1):8.1f} us  {k}")
    if out_dir is not None:
        (out_dir / f"kernels_{label}.json").write_text(json.dumps(rows))
    return rows


def profile_model(path: Path, n_prompt: int, n_steps: int, out_dir: Path | None, cprofile: bool = False) -> dict:
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    m = load_model(path, make_placement("cuda", -1))
    be = m.placement.layer(0)
    rng = np.random.default_rng(0)
    st = m.new_state(n_prompt + n_steps + 16)
    prompt = rng.integers(0, m.params.n_vocab, n_prompt).astype(np.int32)
    m.forward(prompt, st, 0)
    res = {}
    walls, devs = [], []
    for _ in range(3):
        w, d = _events_ms(be, lambda: m.forward(prompt, st, 0))
        walls.append(w)
        devs.append(d)
    res["pp_wall_ms"], res["pp_dev_ms"] = statistics.median(walls), statistics.median(devs)
    print(f"  pp{n_prompt}: wall {res['pp_wall_ms']:.1f} ms, device span {res['pp_dev_ms']:.1f} ms")
    gc_ms = _gc_time(lambda: m.forward(prompt, st, 0))
    print(f"  pp{n_prompt}: {gc_ms[0]:.1f} ms of garbage collection in {gc_ms[1]} collections during one forward")
    import gc

    gc.disable()
    try:
        w, d = _events_ms(be, lambda: m.forward(prompt, st, 0))
    finally:
        gc.enable()
    print(f"  pp{n_prompt} with gc disabled: wall {w:.1f} ms, device span {d:.1f} ms")
    _kernel_table(lambda: (m.forward(prompt, st, 0), be.synchronize()), "prompt", out_dir)
    toks = rng.integers(0, m.params.n_vocab, n_steps + 8).astype(np.int32)
    for i in range(8):
        m.forward(toks[i : i + 1], st, i)

    def steps():
        for i in range(n_steps):
            m.forward(toks[i : i + 1], st, 8 + i)

    w, d = _events_ms(be, steps)
    res["tg_wall_ms_per_tok"], res["tg_dev_ms_per_tok"] = w / n_steps, d / n_steps
    print(f"  decode: wall {w / n_steps:.3f} ms/token, device span {d / n_steps:.3f} ms/token")
    if be.steps.graph is not None:
        g = be.steps.graph.graph
        w, d = _events_ms(be, lambda: [g.launch(be._cp_stream) for _ in range(20)])
        res["graph_ms"] = d / 20
        print(f"  decode graph replay alone: {d / 20:.3f} ms")
        _kernel_table(lambda: (g.launch(be._cp_stream), be._cp_stream.synchronize()), "decode_graph", out_dir)
    res["stats"] = vars(be.stats).copy()
    if cprofile:
        _host_profile(lambda: m.forward(prompt, st, 0), "host_prompt", out_dir)
        _host_profile(steps, "host_decode", out_dir)
    return res


def _host_profile(fn, label: str, out_dir: Path | None) -> None:
    """cProfile of fn(): the host side (Python) of a forward, top functions by own time."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    ps = pstats.Stats(pr, stream=buf)
    ps.sort_stats("tottime").print_stats(30)
    ps.sort_stats("cumulative").print_stats(40)
    text = buf.getvalue()
    if out_dir is not None:
        (out_dir / f"{label}.txt").write_text(text)
    print(f"  {label}: " + " ".join(text.split("\n")[:3])[:200])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--types", default="Q4_0,Q8_0")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--cprofile", action="store_true", help="also profile the host side (cProfile)")
    args = ap.parse_args()
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    out_dir = Path(args.out) if args.out else None
    work = Path(tempfile.mkdtemp())
    allres = {}
    for gtype in args.types.split(","):
        path = work / f"mistral{args.layers}-{gtype}.gguf"
        write_random_gguf(path, "llama", *llama_spec(4096, args.layers, 32, 8, 14336, 32000, gtype))
        print(f"Mistral-7B shape, {args.layers} layers, {gtype}:", flush=True)
        allres[gtype] = profile_model(path, args.prompt, 64, out_dir, args.cprofile)
    if out_dir is not None:
        (out_dir / "profile.json").write_text(json.dumps(allres, indent=1, default=str))


if __name__ == "__main__":
    main()
