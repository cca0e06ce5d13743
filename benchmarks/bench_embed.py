"""Embedding throughput: embedkit vs sentence-transformers (torch CPU) vs llama-cpp-python, same threads.

Chunks are real prose (the stdlib docstring paragraphs of tests/data/embed/texts.json, joined and cut
into pieces of about N tokens). Every side embeds the same chunks with all-MiniLM-L6-v2 and batch size
32; the table shows texts/s, tokens/s (tokens counted by the model's tokenizer incl. [CLS]/[SEP]) and
the lowest cosine of each side's vectors against sentence-transformers' (a sanity check).

With --rounds R each side embeds the chunks R times, the sides taking turns (the first side alternates
from round to round), and the table shows each side's fastest round: on a shared machine a load spike
then hits one round, not the comparison. Every round's seconds are printed below the table.

Usage: python benchmarks/bench_embed.py [--n 1000] [--tokens 128,256] [--threads 2] [--rounds 1]
       [--model GGUF] [--hf-dir DIR] [--skip-llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_chunks(tokenizer, n: int, target: int) -> list[str]:
    """n chunks of about `target` tokens (incl. specials) cut from the reference texts, cycling through them."""
    words = " ".join(json.loads((REPO / "tests/data/embed/texts.json").read_text())).split()
    per_word = (len(tokenizer.encode(" ".join(words[:2000]))) - 2) / 2000
    k = max(1, int((target - 2) / per_word))
    chunks, start = [], 0
    while len(chunks) < n:
        piece = words[start : start + k]
        if len(piece) < k:
            start = 0
            continue
        text = " ".join(piece)
        while len(tokenizer.encode(text)) > target and len(piece) > 1:
            piece = piece[:-1]
            text = " ".join(piece)
        chunks.append(text)
        start += k
    return chunks


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def make_sides(st, ours, llama, chunks: list[str], batch_size: int) -> dict[str, Callable[[], np.ndarray]]:
    """One function per side that embeds all chunks (sentence-transformers first: the reference)."""

    def run_st() -> np.ndarray:
        return st.encode(chunks, batch_size=batch_size, convert_to_numpy=True)

    def run_ours() -> np.ndarray:
        return ours.embed(chunks, batch_size=batch_size)

    def run_llama() -> np.ndarray:
        out = []
        for i in range(0, len(chunks), batch_size):
            out.extend(llama.embed(chunks[i : i + batch_size], normalize=True))
        return np.asarray(out, dtype=np.float32)

    sides = {"sentence-transformers": run_st, "embedkit": run_ours}
    if llama is not None:
        sides["llama-cpp-python"] = run_llama
    return sides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tokens", default="128,256")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="runs per side, taking turns; the fastest is shown")
    ap.add_argument("--model", default=None, help="MiniLM GGUF (default: the catalog's all-minilm-l6-v2)")
    ap.add_argument("--hf-dir", default="/tmp/models/all-MiniLM-L6-v2", help="the same model for sentence-transformers")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("EMBEDKIT_THREADS", str(args.threads))
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.catalog import resolve_model
    from embedkit.embed import Embedder
    from embedkit.kernels import set_num_threads

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    model_path = Path(args.model) if args.model else resolve_model(None, kind="embed")
    ours = Embedder(model_path)
    st = SentenceTransformer(args.hf_dir, device="cpu")
    llama = None
    if not args.skip_llama_cpp:
        try:
            from llama_cpp import Llama

            llama = Llama(str(model_path), embedding=True, n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=8192, n_batch=8192, n_ubatch=8192, verbose=False)
        except ImportError:
            pass

    print(f"# bench_embed: {platform.machine()}, {os.cpu_count()} cores, threads={args.threads}, "
          f"model {model_path.name}, n={args.n}, batch {args.batch_size}, rounds {args.rounds}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'chunk':>6} {'side':<22} {'seconds':>8} {'texts/s':>8} {'tokens/s':>9} {'min cos vs ST':>14}")
    for target in (int(t) for t in args.tokens.split(",")):
        chunks = make_chunks(ours.tokenizer, args.n, target)
        n_tokens = sum(ours.count_tokens(c) for c in chunks)
        ours.embed(chunks[:8])  # warm up (Numba cache load)
        st.encode(chunks[:8])
        if llama is not None:
            llama.embed(chunks[:8])
        sides = make_sides(st, ours, llama, chunks, args.batch_size)
        times: dict[str, list[float]] = {side: [] for side in sides}
        vectors: dict[str, np.ndarray] = {}
        for r in range(max(1, args.rounds)):
            order = list(sides)
            if r % 2:
                order.reverse()
            for side in order:
                t0 = time.perf_counter()
                vectors[side] = sides[side]()
                times[side].append(time.perf_counter() - t0)
        ref = vectors["sentence-transformers"]
        results = {side: (min(times[side]), vectors[side]) for side in sides}
        for side, (dt, v) in results.items():
            rate = f"{len(chunks) / dt:>8.1f} {n_tokens / dt:>9.0f}"
            print(f"{target:>6} {side:<22} {dt:>8.2f} {rate} {cos_min(v, ref):>14.7f}")
        print(f"{target:>6} (mean tokens/chunk {n_tokens / len(chunks):.1f}; embedkit/ST speed "
              f"{results['sentence-transformers'][0] / results['embedkit'][0]:.2f}x)")
        if args.rounds > 1:
            for side, ts in times.items():
                print(f"{target:>6} {side} seconds per round: {', '.join(f'{t:.2f}' for t in ts)}")


if __name__ == "__main__":
    main()
