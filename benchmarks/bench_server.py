"""HTTP serving: `embedkit serve` beside llama.cpp's `llama-server`, same GGUF files, same thread count, one run.

Embeddings: R requests of one short text each (seeded prose, ~20-60 tokens) sent by C concurrent clients, for
C in 1, 8, 32; the table shows requests/s and p50/p95 latency. embedkit batches concurrent requests into shared
forwards; llama-server runs with `--embedding` (and `--parallel 32`, so it can batch them too).
Generation: S concurrent streamed completions of T tokens each, for S in 1, 4, 8 (`--streams`); the table shows
aggregate generated tokens/s (completion tokens of all streams over the wall time from sending the first request to
the last stream's end, time to first token included) and each stream's mean time to first token. Both sides get the
same requests: `/v1/completions`, the same prompts (prompt i of `texts(8, seed=2)` for stream i), greedy
(temperature 0), `max_tokens` T with `ignore_eos`, `stream` with usage; and the same settings:
`--threads`/`-t`/`-tb` N, 8 slots (`--parallel 8`) of `--ctx` tokens each (llama-server's -c is the total, not
unified), continuous batching (on by default in both), the prompt cache (on by default in both: each slot keeps its
last request's tokens and a new prompt reuses its longest cached prefix). A warm-up sends all 8 prompts to each side
first, so every measured request finds its prompt cached but its last token, on both sides alike; apart from them,
the time to first token of prompts neither server has seen (one request at a time) is measured too: the prompt's own
forward. This machine's speed drifts within minutes, so both generation servers stay up (the idle one sleeps) and
each stream count is measured over --rounds rounds alternating the sides (which goes first alternates too); the
table gives each side's median (min-max) and the ratio of the medians, with the 1-minute load average of the level.

`--spin-counts 500,3000` measures one embedkit side per GOMP_SPINCOUNT value (how long its idle kernel threads spin
before sleeping; `embedkit serve` picks 3000, or 500 on a busy machine, unless the environment sets one) beside the
same llama-server, each with its ratio; llama-server always runs without GOMP_SPINCOUNT/OMP_WAIT_POLICY (its
libgomp's defaults).

The embedding servers run one at a time (embedkit's, then llama-server's), never together. llama-server's binary:
--llama-server, else $LLAMA_CPP_BIN, else /work/llamacpp/build/bin/llama-server; without one, only embedkit is
measured (and a line says so).

Usage: python benchmarks/bench_server.py [--threads 2] [--requests 64] [--gen-tokens 64] [--rounds 5]
       [--spin-counts N,M] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
EMBED_LEVELS = (1, 8, 32)
GEN_LEVELS = (1, 4, 8)
FRESH_PROMPTS = 4  # prompts new to the server (no cached prefix), sent one at a time for the prompt-only TTFT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts(n: int, seed: int = 1) -> list[str]:
    """n short texts cut from the reference prose (seeded)."""
    words = " ".join(json.loads((REPO / "tests/data/embed/texts.json").read_text())).split()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(15, 45))
        start = int(rng.integers(0, len(words) - k))
        out.append(" ".join(words[start : start + k]))
    return out


class Server:
    """A server subprocess, ready once its /health answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 900) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def embed_level(url: str, model: str, items: list[str], concurrency: int) -> dict[str, float]:
    """Send one request per text with `concurrency` clients; requests/s and latency percentiles."""
    latencies: list[float] = []
    todo = iter(items)

    async def worker(client: httpx.AsyncClient) -> None:
        for text in todo:
            t = time.perf_counter()
            r = await client.post("/v1/embeddings", json={"model": model, "input": text})
            r.raise_for_status()
            assert len(r.json()["data"]) == 1
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"rps": len(items) / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))}


async def gen_level(url: str, model: str, prompts: list[str], tokens: int) -> dict[str, float]:
    """All prompts streamed at once; aggregate completion tokens/s and mean time to first token."""
    counts, firsts = [], []

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True}
        t = time.perf_counter()
        first, n_chunks, usage = None, 0, None
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    usage = obj["usage"]
                if obj.get("choices") and obj["choices"][0].get("text"):
                    n_chunks += 1
                    if first is None:
                        first = time.perf_counter() - t
        counts.append(usage["completion_tokens"] if usage else n_chunks)
        firsts.append(first if first is not None else float("nan"))

    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.perf_counter() - t0
    return {"tps": sum(counts) / wall, "ttft": float(np.nanmean(firsts)) * 1000, "tokens": float(sum(counts))}


def side_env(llama: bool, extra: dict[str, str]) -> dict[str, str]:
    """A server's environment: llama-server's without OpenMP wait settings (its libgomp keeps its defaults, whatever
    this shell sets), embedkit's with `extra` (`embedkit serve` bounds its spinning itself unless one is set)."""
    env = {k: v for k, v in os.environ.items() if not (llama and k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))}
    return {**env, **extra}


def embedkit_cmd(args, port: int, gen: bool) -> list[str]:
    """`embedkit serve` with only the model of the half being measured."""
    cmd = [sys.executable, "-m", "embedkit.cli.main", "serve", "--port", str(port), "--threads", str(args.threads)]
    if gen:
        return cmd + ["--embed-model", "none", "-m", args.gen_model, "--parallel", "8", "-c", str(args.ctx)]
    return cmd + ["--embed-model", args.embed_model]


def llama_cmd(binary: str, args, port: int, model_path: Path, gen: bool) -> list[str]:
    """llama-server on the same file and threads: 8 slots of the same context for generation (its -c is the
    total), or --embedding with 32 slots."""
    cmd = [binary, "-m", str(model_path), "--port", str(port), "--host", "127.0.0.1", "--threads", str(args.threads),
           "--threads-batch", str(args.threads)]
    if gen:
        cmd += ["--parallel", "8", "-c", str(8 * args.ctx)]
        return cmd + (["--no-cont-batching"] if args.no_cont_batching else [])
    return cmd + ["--embedding", "--parallel", "32", "-c", str(32 * 512), "-b", "4096", "-ub", "4096"]


def gen_prompts() -> list[str]:
    """The generation prompts: stream i of every level sends prompt i."""
    return [f"Story {i}: {t}" for i, t in enumerate(texts(8, seed=2))]


def measure_gen(servers: dict[str, Server], args) -> tuple[dict, dict, dict, dict]:
    """Both generation servers up: warm-up, then per stream count `args.rounds` rounds alternating the sides.
    Returns per side and level the rounds' results, the load average of each level's rounds, each side's
    fresh-prompt time to first token and one greedy completion of each side."""
    prompts = gen_prompts()
    names = list(servers)
    for srv in servers.values():  # warm-up: every prompt cached in a slot, as the rounds will find them
        asyncio.run(gen_level(srv.url, args.gen_model, prompts, 4))
    rounds: dict[str, dict[int, list[dict[str, float]]]] = {n: {s: [] for s in GEN_LEVELS} for n in names}
    loads: dict[int, list[float]] = {s: [] for s in GEN_LEVELS}
    for r in range(args.rounds):
        for s in GEN_LEVELS:
            order = names if r % 2 == 0 else names[::-1]  # each side first and last in turn
            for name in order:
                loads[s].append(os.getloadavg()[0])
                rounds[name][s].append(asyncio.run(gen_level(servers[name].url, args.gen_model, prompts[:s],
                                                              args.gen_tokens)))
    fresh_ttft: dict[str, list[float]] = {n: [] for n in names}
    for i, p in enumerate(texts(FRESH_PROMPTS, seed=3)):  # distinct first words: nothing cached but BOS
        for name in (names if i % 2 == 0 else names[::-1]):
            fresh_ttft[name].append(asyncio.run(gen_level(servers[name].url, args.gen_model, [p], 2))["ttft"])
    check: dict[str, str] = {}
    for name, srv in servers.items():
        r = httpx.post(srv.url + "/v1/completions", json={"model": args.gen_model, "prompt": prompts[0],
                                                          "max_tokens": 8, "temperature": 0}, timeout=1800)
        check[name] = r.json()["choices"][0]["text"]
    return rounds, loads, {n: float(np.nanmean(v)) for n, v in fresh_ttft.items()}, check


def print_gen(args, rounds: dict, loads: dict, fresh_ttft: dict[str, float]) -> None:
    """The generation table: per side median (min-max) tok/s and median TTFT, and each embedkit side's ratio of
    medians to llama-server's."""
    names = list(rounds)
    ref = "llama-server" if "llama-server" in rounds else None
    ours = [n for n in names if n != ref]
    print(f"\n## Generation: {len(GEN_LEVELS)} stream counts x {args.rounds} rounds, sides alternating; streams of "
          f"{args.gen_tokens} tokens, {args.gen_model}, greedy, ignore_eos, prompts cached but their last token")
    ratio_heads = [f"{n} / {ref}" for n in ours] if ref else []
    print("| streams | " + " | ".join([f"{n} tok/s median (min-max) | {n} TTFT ms" for n in names] + ratio_heads)
          + " | load avg |")
    print("|---|" + "---|" * (2 * len(names) + len(ratio_heads)) + "---|")
    for s in GEN_LEVELS:
        cells, med = [], {}
        for n in names:
            tps = [x["tps"] for x in rounds[n][s]]
            med[n] = float(np.median(tps))
            cells.append(f"{med[n]:.1f} ({min(tps):.1f}-{max(tps):.1f}) | "
                         f"{float(np.median([x['ttft'] for x in rounds[n][s]])):.0f}")
        ratios = [f"**{med[n] / med[ref]:.2f}**" for n in ours] if ref else []
        print(f"| {s} | " + " | ".join(cells + ratios) + f" | {min(loads[s]):.1f}-{max(loads[s]):.1f} |")
    print("\ntime to first token of a prompt new to the server (mean of "
          f"{FRESH_PROMPTS}, one at a time, ~20-60 tokens): "
          + ", ".join(f"{n} {ms:.0f} ms" for n, ms in fresh_ttft.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=64, help="embedding requests per concurrency level")
    ap.add_argument("--gen-tokens", type=int, default=64, help="tokens per generation stream")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per stream count")
    ap.add_argument("--ctx", type=int, default=512, help="context per generation slot")
    ap.add_argument("--embed-model", default="all-minilm-l6-v2")
    ap.add_argument("--gen-model", default="smollm2-135m")
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: $LLAMA_CPP_BIN or the "
                                                         "/work/llamacpp build)")
    ap.add_argument("--no-cont-batching", action="store_true", help="llama-server without continuous batching")
    ap.add_argument("--spin-counts", default="", help="comma-separated GOMP_SPINCOUNT values: one embedkit generation "
                                                      "side per value (default: one side, `embedkit serve`'s own)")
    ap.add_argument("--streams", default="1,4,8", help="comma-separated stream counts of the generation half")
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="16 requests, 8 tokens, 1 round: checks the harness")
    args = ap.parse_args()
    global GEN_LEVELS
    GEN_LEVELS = tuple(int(v) for v in args.streams.split(",") if v.strip())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if args.quick:
        args.requests, args.gen_tokens, args.rounds = 16, 8, 1

    from embedkit.catalog import resolve_model

    embed_path = resolve_model(args.embed_model, kind="embed")
    gen_path = resolve_model(args.gen_model, kind="generate")
    binary = args.llama_server or os.environ.get("LLAMA_CPP_BIN") or "/work/llamacpp/build/bin/llama-server"
    if not Path(binary).is_file():
        print(f"llama-server not found at {binary}: measuring embedkit only", file=sys.stderr)
        binary = None

    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, threads={args.threads}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    items = texts(args.requests)
    rows_e: dict[str, dict[int, dict[str, float]]] = {}
    embed_loads: dict[str, tuple[float, float]] = {}  # 1-minute load average before and after each side's levels
    check_vectors: dict[str, np.ndarray] = {}  # one text's vector from each side (a sanity check)
    sides = [("embedkit", None)] + ([("llama-server", binary)] if binary else [])
    if not args.skip_embed:
        for side, exe in sides:
            port = free_port()
            cmd = embedkit_cmd(args, port, gen=False) if exe is None else llama_cmd(exe, args, port, embed_path, False)
            srv = Server(side, cmd, port, env=side_env(exe is not None, {})).wait()
            try:
                asyncio.run(embed_level(srv.url, args.embed_model, items[:8], 8))  # warm-up
                loads = [os.getloadavg()[0]]
                rows_e[side] = {c: asyncio.run(embed_level(srv.url, args.embed_model, items, c)) for c in EMBED_LEVELS}
                embed_loads[side] = (loads[0], os.getloadavg()[0])
                r = httpx.post(srv.url + "/v1/embeddings", json={"model": args.embed_model, "input": items[0]},
                               timeout=600)
                check_vectors[side] = np.asarray(r.json()["data"][0]["embedding"], dtype=np.float64)
            finally:
                srv.stop()
    gen_results = None
    if not args.skip_gen:
        servers: dict[str, Server] = {}
        spins = [int(v) for v in args.spin_counts.split(",") if v.strip()]
        gen_sides = [(f"embedkit spin={n}", None, {"GOMP_SPINCOUNT": str(n)}) for n in spins]
        gen_sides = gen_sides or [("embedkit", None, {})]
        gen_sides += [(side, exe, {}) for side, exe in sides if exe is not None]
        try:
            for side, exe, env in gen_sides:  # started one after the other: each loads on a machine to itself
                port = free_port()
                cmd = embedkit_cmd(args, port, gen=True) if exe is None else llama_cmd(exe, args, port, gen_path, True)
                servers[side] = Server(side, cmd, port, env=side_env(exe is not None, env)).wait()
            gen_results = measure_gen(servers, args)
        finally:
            for srv in servers.values():
                srv.stop()

    if rows_e:
        print(f"\n## Embeddings: {args.requests} requests of one text, {args.embed_model}")
        print("| concurrency | " + " | ".join(f"{s} req/s | {s} p50 ms | {s} p95 ms" for s in rows_e) + " |")
        print("|---|" + "---|" * (3 * len(rows_e)))
        for c in EMBED_LEVELS:
            cells = [f"{rows_e[s][c]['rps']:.1f} | {rows_e[s][c]['p50']:.0f} | {rows_e[s][c]['p95']:.0f}"
                     for s in rows_e]
            print(f"| {c} | " + " | ".join(cells) + " |")
        if len(rows_e) == 2:
            a, b = rows_e
            ratios = ", ".join(f"c{c} {rows_e[a][c]['rps'] / rows_e[b][c]['rps']:.2f}x" for c in EMBED_LEVELS)
            print(f"\nreq/s {a} / {b}: {ratios}")
        print("load average (1 min) before / after each side's levels: "
              + ", ".join(f"{s} {lo[0]:.1f} / {lo[1]:.1f}" for s, lo in embed_loads.items()))
    if len(check_vectors) == 2:
        a, b = check_vectors.values()
        print(f"\ncosine of the two sides' vectors of one text: {a @ b / (np.linalg.norm(a) * np.linalg.norm(b)):.6f}")
    if gen_results is not None:
        rounds, loads, fresh_ttft, check_texts = gen_results
        print_gen(args, rounds, loads, fresh_ttft)
        print(f"settings of every side: --threads {args.threads} (llama-server -t {args.threads} -tb {args.threads}), "
              f"--parallel 8, {args.ctx} tokens per slot, continuous batching "
              f"{'off on llama-server' if args.no_cont_batching else 'on'}, prompt cache on")
        if len(check_texts) >= 2:
            same = len(set(check_texts.values())) == 1
            print(f"\ngreedy 8 tokens of one prompt: {'identical' if same else f'differ: {check_texts}'}")


if __name__ == "__main__":
    main()
