"""Prompt processing (512 tokens) and generation (128 tokens) speed, embedkit vs llama.cpp, in one run.

    nice .venv/bin/python benchmarks/bench_generate.py [--threads 2] [--models gemma3-270m,...] [--rounds 3]
        [--cpu-math llama.cpp|float32] [--llama-bench PATH] [--isa native|avx2]

`--isa avx2` (EMBEDKIT_CPU_ISA=avx2) runs embedkit as on an AVX2-only host (no AVX-512 in its kernel choice or
machine code); pair it with a `llama-bench` built without AVX-512 for an AVX2 table on an AVX-512 host. The
header says the CPU (lscpu model name) and the instruction sets each side ran with. After editing kernels, give
the run a fresh NUMBA_CACHE_DIR: Numba's cache can hand back code compiled before the edit (see `kernels/cpu/isa.py`).

llama-cpp-python is the reference when importable (dev machine only), else llama.cpp's `llama-bench` given by
--llama-bench / LLAMA_CPP_BIN (its prompt is its own random tokens of the same length). Both sides get the same
prompt ids, the same context (1024), batch (512) and thread count. Generation is greedy from the end of a
16-token prompt;
embedkit's figure includes its Python loop and sampling (argmax) per token. A short warm-up run
compiles/caches the Numba kernels first. Also prints the per-token cost of the default sampler chain on
each model's vocabulary.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from embedkit.catalog import resolve_model
from embedkit.generate import Generator, Sampler, SamplerParams

N_PROMPT, N_GEN, N_CTX, N_BATCH = 512, 128, 1024, 512
TEXT = (
    "The history of computing is a story of ideas meeting machines. From the abacus to the analytical engine, "
    "from vacuum tubes to transistors, each step made calculation cheaper and more widely available. "
)


def prompt_ids(gen: Generator, n: int) -> list[int]:
    """n token ids of ordinary English text (BOS first when the model asks for it)."""
    ids = gen.tokenize(TEXT * (4 * n // 30 + 1))
    return ids[:n]


def load_embedkit(path, threads: int) -> Generator:
    """The generator, warmed up (JIT caches)."""
    gen = Generator(path, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=threads)
    gen.generate(prompt_ids(gen, 16), n_predict=4, sampler=SamplerParams(temp=0.0), ignore_eos=True)
    return gen


def bench_embedkit(gen: Generator) -> tuple[float, float]:
    greedy = SamplerParams(temp=0.0)
    ids = prompt_ids(gen, N_PROMPT)
    gen.reset()
    res = gen.generate(ids, n_predict=1, sampler=greedy)
    pp = 1000.0 * res.timings.prompt_tokens / res.timings.prompt_ms
    gen.reset()
    # N_GEN + 1 sampled tokens = N_GEN decode steps (the last sampled token is never run)
    res = gen.generate(ids[:16], n_predict=N_GEN + 1, sampler=greedy, ignore_eos=True)
    tg = 1000.0 * N_GEN / res.timings.gen_ms
    return pp, tg


def load_llama_cpp(path, threads: int):
    """llama-cpp-python's Llama for the same file, or None where it isn't installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.Llama(str(path), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=threads, n_threads_batch=threads,
                           verbose=False)


def bench_llama_cpp(llm, ids: list[int]) -> tuple[float, float]:
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    llm.eval(ids[:16])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    pp = len(ids) / (time.perf_counter() - t)
    llm.reset()
    llm.eval(ids[:16])
    tok = int(np.argmax(last_logits()))
    t = time.perf_counter()
    for _ in range(N_GEN):
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
    tg = N_GEN / (time.perf_counter() - t)
    return pp, tg


def bench_llama_bench(binary: str, path, threads: int) -> tuple[float, float]:
    """(pp512, tg128) tokens/s from llama.cpp's own `llama-bench` (one repetition each), where llama-cpp-python
    is absent: the same prompt length, generated tokens and threads."""
    import json
    import subprocess

    out = subprocess.run(
        [binary, "-m", str(path), "-t", str(threads), "-p", str(N_PROMPT), "-n", str(N_GEN), "-b", str(N_BATCH),
         "-r", "1", "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rates = {(r["n_prompt"], r["n_gen"]): float(r["avg_ts"]) for r in json.loads(out)}
    return rates[(N_PROMPT, 0)], rates[(0, N_GEN)]


def cpu_model() -> str:
    """lscpu's model name, else the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def embedkit_isa() -> str:
    """The instruction sets embedkit's kernels were compiled for, and how they were chosen."""
    from embedkit import cpu_isa
    from embedkit.kernels.cpu import isa

    have = "AVX-512" + (" VNNI" if isa.HAS_AVX512_VNNI else "") if isa.HAS_AVX512 else "AVX2" if isa.HAS_AVX2 else "SSE"
    how = "restricted by EMBEDKIT_CPU_ISA=avx2" if cpu_isa.requested() == "avx2" else "the host's"
    try:
        from threadpoolctl import threadpool_info

        libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
        blas = ", ".join(f"{i['internal_api']} {i.get('architecture')}" for i in libs)
    except ImportError:
        blas = "unknown"
    return f"{have} ({how}), BLAS {blas or 'none'}"


def llama_bench_isa(binary: str) -> str:
    """The x86 instruction sets a llama-bench was built with, from the CMakeCache.txt of its build folder
    (bin/..), else 'unknown'."""
    cache = Path(binary).resolve().parent.parent / "CMakeCache.txt"
    try:
        lines = cache.read_text().splitlines()
    except OSError:
        return "unknown (no CMakeCache.txt beside its bin/)"
    flags = dict(line.split(":BOOL=", 1) for line in lines if line.startswith("GGML_") and ":BOOL=" in line)
    if flags.get("GGML_NATIVE") == "ON":
        return "native (-march=native: the host's)"
    names = ["AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8"]
    on = [n for n in names if flags.get(f"GGML_{n}") == "ON"]
    off = [n for n in ("AVX512", "AMX_INT8") if n not in on]
    return f"{' '.join(on) or 'none'} on" + (f", {' '.join(off)} off" if off else "")


def sampler_cost_ms(n_vocab: int) -> tuple[float, float]:
    """Milliseconds per token of greedy and of the default chain (top-k 40, top-p .95, min-p .05, temp .8)."""
    logits = (np.random.default_rng(0).standard_normal(n_vocab) * 3).astype(np.float32)
    history = list(range(64))
    out = []
    for p in (SamplerParams(temp=0.0), SamplerParams(seed=0, repeat_penalty=1.1)):
        s = Sampler(p)
        t = time.perf_counter()
        for _ in range(50):
            s(logits, history)
        out.append(1000.0 * (time.perf_counter() - t) / 50)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="gemma3-270m,smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the two sides this many times and keep each side's best figures "
                         "(the dev VM's speed drifts within minutes)")
    ap.add_argument("--cpu-math", choices=["float32", "ggml"], default=None,
                    help="embedkit's CPU arithmetic for generation (EMBEDKIT_CPU_MATH; default float32)")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_CPP_BIN"),
                    help="path of llama.cpp's llama-bench, the reference where llama-cpp-python is not installed "
                         "(default: $LLAMA_CPP_BIN)")
    ap.add_argument("--isa", choices=["native", "avx2"], default=None,
                    help="instruction sets of embedkit's kernels (EMBEDKIT_CPU_ISA; avx2: as on an AVX2-only host)")
    args = ap.parse_args()
    if args.isa and os.environ.get("EMBEDKIT_CPU_ISA", "native") != args.isa:
        # numpy, OpenBLAS and Numba fixed their instruction sets at the imports above: start again with them set
        from embedkit import cpu_isa

        os.environ.update(cpu_isa.environment(args.isa))
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    if args.llama_bench and not os.access(args.llama_bench, os.X_OK):
        print(f"# no llama-bench at {args.llama_bench}: llama.cpp columns skipped")
        args.llama_bench = None
    if args.cpu_math:
        os.environ["EMBEDKIT_CPU_MATH"] = args.cpu_math
    print(f"# embedkit arithmetic: {os.environ.get('EMBEDKIT_CPU_MATH') or 'float32'} (EMBEDKIT_CPU_MATH)")
    print(f"# {platform.machine()} {platform.system()}, {args.threads} threads, "
          f"pp{N_PROMPT} / tg{N_GEN}, n_ctx {N_CTX}, batch {N_BATCH}, best of {args.rounds} alternating round(s), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    print(f"# CPU: {cpu_model()}; embedkit: {embedkit_isa()}")
    if args.llama_bench:
        print(f"# llama.cpp: {args.llama_bench} ({llama_bench_isa(args.llama_bench)})")
    head = (f"{'model':22} {'embedkit pp t/s':>16} {'llama.cpp pp t/s':>17} {'ratio':>6} "
            f"{'embedkit tg t/s':>16} {'llama.cpp tg t/s':>17} {'ratio':>6} {'load ms':>8} "
            f"{'argmax ms':>9} {'chain ms':>8}")
    print(head)
    print("-" * len(head), flush=True)
    for name in args.models.split(","):
        path = resolve_model(name, kind="generate")
        gen = load_embedkit(path, args.threads)
        llm = load_llama_cpp(path, args.threads)
        if llm is None and not args.llama_bench:
            print(f"# {name}: no llama.cpp reference (install llama-cpp-python or pass --llama-bench)")
        pp = tg = rpp = rtg = float("nan")
        for _ in range(args.rounds):
            a, b = bench_embedkit(gen)
            pp, tg = np.nanmax([pp, a]), np.nanmax([tg, b])
            if llm is not None:
                a, b = bench_llama_cpp(llm, prompt_ids(gen, N_PROMPT))
                rpp, rtg = np.nanmax([rpp, a]), np.nanmax([rtg, b])
            elif args.llama_bench:
                a, b = bench_llama_bench(args.llama_bench, path, args.threads)
                rpp, rtg = np.nanmax([rpp, a]), np.nanmax([rtg, b])
        load_ms = gen.load_ms
        greedy_ms, chain_ms = sampler_cost_ms(gen.model.params.n_vocab)
        del gen, llm
        print(f"{name:22} {pp:16.1f} {rpp:17.1f} {pp / rpp:6.2f} {tg:16.1f} {rtg:17.1f} {tg / rtg:6.2f} "
              f"{load_ms:8.0f} {greedy_ms:9.2f} {chain_ms:8.2f}", flush=True)
    print("ratio = embedkit / llama.cpp; sampler columns: per-token cost on the model's vocabulary "
          "(chain = top-k 40, top-p 0.95, min-p 0.05, temp 0.8, repeat penalty 1.1 over 64 tokens)")


if __name__ == "__main__":
    main()
