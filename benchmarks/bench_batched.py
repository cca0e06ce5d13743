"""Aggregate decode speed with several sequences at once (continuous batching), embedkit vs llama.cpp, in one run.

    nice .venv/bin/python benchmarks/bench_batched.py [--threads 2] [--models qwen2.5-coder-0.5b,gemma3-270m]
        [--npp 128] [--ntg 128] [--npl 1,2,4,8] [--cpu-math llama.cpp|float32] [--llama-batched-bench PATH]
        [--device cuda] [--random llama:tinyllama-1.1b:Q4_0] [--rounds 3]

For each sequence count B, B prompts of `npp` tokens are submitted at once to a `BatchGenerator` with B slots and
each generates `ntg` tokens (greedy, end-of-generation ignored): like llama.cpp's `llama-batched-bench -npp N -ntg N
-npl B` (prompts not shared). T_PP: the steps until every sequence has its first token; T_TG: the `ntg` decode steps
after it, B rows each; S_TG = B * ntg / T_TG (our figure includes the Python scheduler and sampling).
llama-batched-bench is found from --llama-batched-bench or LLAMA_BATCHED_BENCH and runs the same files with the same
thread count, alternating with ours one sequence count at a time (its table is parsed and printed beside ours, with
the 1-minute load average after each pair); skipped with a message when absent. `--rounds R` repeats every count R
times, which side goes first alternating from round to round, and keeps each side's best figure (this machine's
speed drifts within minutes), then prints each side's median of the rounds. Never build llama.cpp from here.
`--device cuda` runs our side on the GPU (whole model); `--random ARCH:SHAPE:TYPE` benchmarks a random-weight model
written first (SHAPE a name of `embedkit.testing.random_models.SHAPES` or of RANDOM_SHAPES here) instead of
--models.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

from embedkit.generate import BatchGenerator, SamplerParams

TEXT = (
    "The history of computing is a story of ideas meeting machines. From the abacus to the analytical engine, "
    "from vacuum tubes to transistors, each step made calculation cheaper and more widely available. "
)
GREEDY = SamplerParams(temp=0.0)
RANDOM_SHAPES = {
    "tinyllama-1.1b": dict(n_vocab=32000, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx=2048),
}


def warm_generator(path: Path, threads: int, npp: int, n_tokens: int, n_seq: int, device: str = "cpu"):
    """(a `BatchGenerator` with n_seq slots for npp prompt + n_tokens generated tokens each, the npp prompt ids),
    warmed up by one short run of every slot (Numba caches, the decode layouts of the weights)."""
    placement = None
    if device == "cuda":
        from embedkit.backend.placement import make_placement

        placement = make_placement("cuda", -1)
    gen = BatchGenerator(path, n_ctx=n_seq * (npp + n_tokens + 8), n_parallel=n_seq, n_batch=max(512, npp * n_seq),
                         n_threads=threads, placement=placement, background=False)  # fmt: skip
    ids = gen.tokenize(TEXT * (4 * npp // 30 + 1))[:npp]
    for h in [gen.submit(ids, n_predict=3, sampler=GREEDY, ignore_eos=True) for _ in range(n_seq)]:
        h.result()
    return gen, ids


def run_ours(path: Path, threads: int, npp: int, ntg: int, n_seq: int, device: str) -> tuple[float, float]:
    """(S_PP, S_TG) tokens/s for n_seq sequences of npp prompt + ntg generated tokens."""
    gen, ids = warm_generator(path, threads, npp, ntg, n_seq, device)
    # ntg + 1 sampled tokens = ntg decode steps (the last sampled token is never run)
    handles = [gen.submit(ids, n_predict=ntg + 1, sampler=GREEDY, ignore_eos=True) for _ in range(n_seq)]
    seqs = [h._seq for h in handles]
    t0 = time.perf_counter()
    while not all(s.tokens for s in seqs):
        gen.step()
    t1 = time.perf_counter()
    gen.run()
    t2 = time.perf_counter()
    assert all(len(h.result().tokens) == ntg + 1 for h in handles)
    return n_seq * npp / (t1 - t0), n_seq * ntg / (t2 - t1)


def interleaved_ratio(path: Path, threads: int, npp: int, n_seq: int, chunks: int, steps: int = 16) -> None:
    """Our S_TG at 1 and at n_seq sequences measured in alternating chunks of `steps` decode steps (two generators
    loaded side by side, every sequence past its prompt; which count goes first alternates), so that the host's
    drift, which moves whole rounds by 30-40% here, falls on both counts alike; prints each chunk pair and the
    median of the pairs' ratios."""
    gens = {}
    n_tokens = chunks * steps + 2
    for b in (1, n_seq):
        gen, ids = warm_generator(path, threads, npp, n_tokens, b)
        seqs = [gen.submit(ids, n_predict=n_tokens, sampler=GREEDY, ignore_eos=True)._seq for _ in range(b)]
        while not all(s.tokens for s in seqs):
            gen.step()
        gens[b] = gen
    ratios = []
    for c in range(chunks):
        rate = {}
        for b in (1, n_seq) if c % 2 == 0 else (n_seq, 1):
            t = time.perf_counter()
            for _ in range(steps):
                gens[b].step()
            rate[b] = b * steps / (time.perf_counter() - t)
        ratios.append(rate[n_seq] / rate[1])
        line = f"B=1 {rate[1]:.1f}, B={n_seq} {rate[n_seq]:.1f} tok/s, ratio {ratios[-1]:.2f}"
        print(f"  chunk {c + 1}: {line}", flush=True)
    print(f"  interleaved B={n_seq} / B=1: median of {chunks} chunk pairs {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")


def run_llama_cpp(binary: str | None, path: Path, threads: int, npp: int, ntg: int, npl: list[int],
                  device: str = "cpu") -> dict:
    """{B: (S_PP, S_TG)} from llama-batched-bench (every layer on the GPU for device cuda), or {} when it is not
    there."""
    if not binary or not Path(binary).is_file():
        print(f"  llama-batched-bench not found ({binary!r}): reference skipped")
        return {}
    cmd = [binary, "-m", str(path), "-c", str(max(npl) * (npp + ntg) + 64), "-b", "2048", "-ub", "512",
           "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, npl)), "-t", str(threads),
           "-tb", str(threads)]  # fmt: skip
    if device == "cuda":
        cmd += ["-ngl", "99"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    rows = {}
    for line in p.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[0] or "x"):
            rows[int(cells[2])] = (float(cells[5]), float(cells[7]))  # S_PP t/s, S_TG t/s
    if not rows:
        print("  llama-batched-bench gave no table:\n" + p.stdout[-800:] + p.stderr[-800:])
    return rows


def cpu_model() -> str:
    """The CPU's model name (lscpu's), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_model(spec: str) -> Path:
    """Write the random-weight model ARCH:SHAPE:TYPE into a temporary folder (once per process)."""
    import tempfile

    from embedkit.testing.random_models import SHAPES, write_random_model

    arch, shape, gtype = spec.split(":")
    out = Path(tempfile.mkdtemp(prefix="bench_batched_")) / f"{arch}-{shape}-{gtype}.gguf"
    return write_random_model(out, arch, RANDOM_SHAPES.get(shape) or SHAPES[shape], gtype, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,gemma3-270m")
    ap.add_argument("--npp", type=int, default=128)
    ap.add_argument("--ntg", type=int, default=128)
    ap.add_argument("--npl", default="1,2,4,8")
    ap.add_argument("--cpu-math", default=None, choices=["float32", "ggml"])
    ap.add_argument("--llama-batched-bench", default=os.environ.get("LLAMA_BATCHED_BENCH"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per count; each side's best is kept")
    ap.add_argument("--interleave", type=int, default=0, metavar="CHUNKS",
                    help="then our B=1 against the largest count in CHUNKS alternating chunks of 16 steps")  # fmt: skip
    ap.add_argument("--random", default=None, help="ARCH:SHAPE:TYPE of a random-weight model to write and run")
    ap.add_argument("--batch-graphs", choices=["on", "off"], default=None,
                    help="cuda: record steps of 2-8 rows as CUDA graphs (default: cuda.BATCH_GRAPHS)")  # fmt: skip
    args = ap.parse_args()
    if args.batch_graphs:
        import embedkit.backend.cuda as cuda_backend_module

        cuda_backend_module.BATCH_GRAPHS = args.batch_graphs == "on"
    if args.cpu_math:
        os.environ["EMBEDKIT_CPU_MATH"] = args.cpu_math
    npl = [int(x) for x in args.npl.split(",")]
    math = os.environ.get("EMBEDKIT_CPU_MATH", "(default)")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    graphs = f", batch graphs {args.batch_graphs}" if args.batch_graphs else ""
    print(f"{cpu_model()}, {args.device}{graphs}, {args.threads} threads, npp {args.npp}, "
          f"ntg {args.ntg}, EMBEDKIT_CPU_MATH={math}, {when}")  # fmt: skip
    from embedkit.catalog import resolve_model  # not needed (nor importable without platformdirs) for --random

    for name in [args.random] if args.random else args.models.split(","):
        path = random_model(args.random) if args.random else resolve_model(name, kind="generate")
        print(f"\n{name} ({path.name})")
        print(f"  {'B':>3} {'ours S_PP':>10} {'ours S_TG':>10} {'x ours B=1':>10} {'llama S_PP':>10} {'llama S_TG':>10}"
              f" {'TG vs llama':>11} {'load avg':>8}")  # fmt: skip
        best: dict[int, list[float]] = {b: [0.0, 0.0, 0.0, 0.0] for b in npl}  # ours pp, tg; llama pp, tg
        rounds_tg: dict[int, tuple[list[float], list[float]]] = {b: ([], []) for b in npl}  # ours, llama.cpp
        for r in range(args.rounds):  # the two sides alternate, one sequence count at a time (load drifts)
            for b in npl:
                ours_first = r % 2 == 1
                if ours_first:
                    ours = run_ours(path, args.threads, args.npp, args.ntg, b, args.device)
                ref = run_llama_cpp(args.llama_batched_bench, path, args.threads, args.npp, args.ntg, [b], args.device)
                if not ours_first:
                    ours = run_ours(path, args.threads, args.npp, args.ntg, b, args.device)
                lp, lt = ref.get(b, (float("nan"), float("nan")))
                for i, v in enumerate((*ours, lp, lt)):
                    best[b][i] = max(best[b][i], v) if v == v else v
                rounds_tg[b][0].append(ours[1])
                rounds_tg[b][1].append(lt)
                if args.rounds > 1:
                    print(f"  round {r + 1} B={b}: ours {ours[1]:.1f}, llama.cpp {lt:.1f} tok/s", flush=True)
        base = best[npl[0]][1]
        for b in npl:
            pp, tg, lp, lt = best[b]
            print(f"  {b:>3} {pp:>10.1f} {tg:>10.1f} {tg / base:>10.2f} {lp:>10.1f} {lt:>10.1f} {tg / lt:>11.2f}"
                  f" {os.getloadavg()[0]:>8.1f}", flush=True)  # fmt: skip
        if args.rounds > 1:  # a lucky single round moves a best figure; the medians show the typical round
            med = {b: (statistics.median(o), statistics.median(ll)) for b, (o, ll) in rounds_tg.items()}
            print(
                "  medians of the rounds (S_TG ours / llama.cpp, x ours B=1): "
                + ", ".join(f"B={b} {o:.1f} / {ll:.1f}, {o / med[npl[0]][0]:.2f}" for b, (o, ll) in med.items())
            )
        if args.interleave:
            interleaved_ratio(path, args.threads, args.npp, max(npl), args.interleave)


if __name__ == "__main__":
    main()
