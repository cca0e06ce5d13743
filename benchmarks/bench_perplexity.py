"""Perplexity of embedkit (both CPU arithmetics) beside llama.cpp's llama-perplexity, same file and text.

    python benchmarks/bench_perplexity.py [--models gemma3-270m,...] [-f TEXT] [-c 128] [--threads 2]
        [--llama-perplexity PATH]   (default: $LLAMA_PERPLEXITY; skipped with a message when absent)

For each model: llama-perplexity's PPL (and its saved log-probabilities, `--kl-divergence-base`), then
`embedkit perplexity` with `--cpu-math float32` and `--cpu-math ggml`, each also compared with llama.cpp's
saved base (`--kl-base`: mean KL(llama.cpp || embedkit) and same top-1). The default text is
tests/data/fidelity/prose.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def llama_ppl(binary: str, model: str, text: str, n_ctx: int, threads: int, base: Path) -> float:
    """llama-perplexity's final PPL (saving its log-probabilities to `base`)."""
    cmd = [binary, "-m", model, "-f", text, "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(threads),
           "--kl-divergence-base", str(base)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if m is None:
        raise SystemExit(f"no PPL in llama-perplexity's output:\n{out.stderr[-2000:]}")
    return float(m.group(1))


def embedkit_ppl(model: str, text: str | None, n_ctx: int, threads: int, math: str, base: Path | None) -> dict:
    """`embedkit perplexity --json` (with --kl-base when `base`)."""
    cmd = [sys.executable, "-m", "embedkit.cli.main", "perplexity", "-m", model, "-c", str(n_ctx),
           "-t", str(threads), "--device", "cpu", "--cpu-math", math, "--json"]  # fmt: skip
    cmd += ["--kl-base", str(base)] if base is not None else ["-f", text]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gemma3-270m,smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("-f", "--file", default=str(ROOT / "tests" / "data" / "fidelity" / "prose.txt"))
    ap.add_argument("-c", "--ctx-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-perplexity", default=os.environ.get("LLAMA_PERPLEXITY"))
    args = ap.parse_args()
    from embedkit.catalog import resolve_model

    binary = args.llama_perplexity
    if not binary or not Path(binary).exists():
        print(f"# llama-perplexity not found ({binary!r}): embedkit only")
        binary = None
    print(f"# {args.file}, -c {args.ctx_size}, {args.threads} threads")
    print("| model | llama.cpp PPL | embedkit float32 PPL (diff) | embedkit ggml PPL (diff) | "
          "KL(llama.cpp || float32), same top | KL(llama.cpp || ggml), same top |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = str(resolve_model(name, kind="generate"))
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "llama.kld"
            ref = llama_ppl(binary, model, args.file, args.ctx_size, args.threads, base) if binary else None
            cells = [name, f"{ref:.4f}" if ref else "-"]
            kls = []
            for math in ("float32", "ggml"):
                ours = embedkit_ppl(model, args.file, args.ctx_size, args.threads, math, None)
                diff = f" ({100 * (ours['ppl'] / ref - 1):+.2f}%)" if ref else ""
                cells.append(f"{ours['ppl']:.4f}{diff}")
                if ref:
                    kl = embedkit_ppl(model, None, args.ctx_size, args.threads, math, base)["kl"]
                    kls.append(f"{kl['kld_mean']:.2e}, {100 * kl['same_top']:.1f}%")
                else:
                    kls.append("-")
            print("| " + " | ".join(cells + kls) + " |", flush=True)


if __name__ == "__main__":
    main()
