"""HTTP serving: `embedkit serve` beside llama.cpp's `llama-server`, same GGUF files, same thread count, one run.

Embeddings: R requests of one short text each (seeded prose, ~20-60 tokens) sent by C concurrent clients, for
C in 1, 8, 32; the table shows requests/s and p50/p95 latency. embedkit batches concurrent requests into shared
forwards; llama-server runs with `--embedding` (and `--parallel 32`, so it can batch them too).
Generation: S concurrent streamed completions of T tokens each (temperature 0, different prompts), for S in 1, 4,
8; the table shows aggregate generated tokens/s and each stream's mean time to first token. Both servers get
`--parallel 8` slots. Both keep a finished request's tokens in its slot and reuse the longest cached prefix of a
new prompt (llama-server's `cache_prompt`, on by default on both): the levels reuse prompts of the warm-up and
of earlier levels, as a chat's turns would. Apart from them, the time to first token of prompts neither server
has seen (one request at a time) is measured too: the prompt's own forward.

The servers run one at a time (embedkit's, then llama-server's for each half), never together, so each gets
the machine's threads. llama-server's binary: --llama-server, else $LLAMA_CPP_BIN, else
/work/llamacpp/build/bin/llama-server; without one, only embedkit is measured (and a line says so).

Usage: python benchmarks/bench_server.py [--threads 2] [--requests 64] [--gen-tokens 32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=64, help="embedding requests per concurrency level")
    ap.add_argument("--gen-tokens", type=int, default=32, help="tokens per generation stream")
    ap.add_argument("--ctx", type=int, default=512, help="context per generation slot")
    ap.add_argument("--embed-model", default="all-minilm-l6-v2")
    ap.add_argument("--gen-model", default="smollm2-135m")
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: $LLAMA_CPP_BIN or the "
                                                         "/work/llamacpp build)")
    ap.add_argument("--no-cont-batching", action="store_true", help="llama-server without continuous batching")
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="16 requests, 8 tokens: checks the harness")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.gen_tokens = 16, 8

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
    rows_g: dict[str, dict[int, dict[str, float]]] = {}
    embed_loads: dict[str, tuple[float, float]] = {}  # 1-minute load average before and after each side's levels
    check_vectors: dict[str, np.ndarray] = {}  # one text's vector from each side (a sanity check)
    check_texts: dict[str, str] = {}  # one greedy completion from each side
    fresh_ttft: dict[str, float] = {}  # mean time to first token of prompts new to the server, one at a time
    sides = [("embedkit", None)] + ([("llama-server", binary)] if binary else [])
    for side, exe in sides:
        if not args.skip_embed:
            port = free_port()
            cmd = embedkit_cmd(args, port, gen=False) if exe is None else llama_cmd(exe, args, port, embed_path, False)
            srv = Server(side, cmd, port).wait()
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
        if not args.skip_gen:
            port = free_port()
            cmd = embedkit_cmd(args, port, gen=True) if exe is None else llama_cmd(exe, args, port, gen_path, True)
            srv = Server(side, cmd, port).wait()
            try:
                prompts = [f"Story {i}: {t}" for i, t in enumerate(texts(8, seed=2))]
                asyncio.run(gen_level(srv.url, args.gen_model, prompts[:1], 4))  # warm-up
                rows_g[side] = {s: asyncio.run(gen_level(srv.url, args.gen_model, prompts[:s], args.gen_tokens))
                                for s in GEN_LEVELS}
                fresh = texts(FRESH_PROMPTS, seed=3)  # distinct first words: nothing cached but BOS
                fresh_ttft[side] = float(np.nanmean([asyncio.run(gen_level(srv.url, args.gen_model, [p], 2))["ttft"]
                                                     for p in fresh]))
                r = httpx.post(srv.url + "/v1/completions", json={"model": args.gen_model, "prompt": prompts[0],
                                                                  "max_tokens": 8, "temperature": 0}, timeout=1800)
                check_texts[side] = r.json()["choices"][0]["text"]
            finally:
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
    if rows_g:
        print(f"\n## Generation: streams of {args.gen_tokens} tokens, {args.gen_model}, temperature 0")
        print("| streams | " + " | ".join(f"{s} tok/s | {s} TTFT ms" for s in rows_g) + " |")
        print("|---|" + "---|" * (2 * len(rows_g)))
        for n in GEN_LEVELS:
            cells = [f"{rows_g[s][n]['tps']:.1f} | {rows_g[s][n]['ttft']:.0f}" for s in rows_g]
            print(f"| {n} | " + " | ".join(cells) + " |")
        print("\ntime to first token of a prompt new to the server (mean of "
              f"{FRESH_PROMPTS}, one at a time, ~20-60 tokens): "
              + ", ".join(f"{s} {ms:.0f} ms" for s, ms in fresh_ttft.items()))

    if len(check_texts) == 2:
        a, b = check_texts.values()
        print(f"\ngreedy 8 tokens of one prompt: {'identical' if a == b else f'differ: {a!r} vs {b!r}'}")


if __name__ == "__main__":
    main()
