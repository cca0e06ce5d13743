"""Where the host time of partial offload goes: cProfile of one pp512 forward and of decode steps of a
Mistral-7B-shaped random model with only some layers on the GPU (`-ngl`), by function.

    python benchmarks/profile_offload.py [--ngl 16] [--type Q4_0] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _profile(label: str, fn, top: int) -> None:
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    print(f"\n== {label}: {time.perf_counter() - t:.3f} s wall ==", flush=True)
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(top)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        print(f"-- by {key}")
        print("\n".join(lines[start : start + top + 1]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ngl", type=int, default=16)
    ap.add_argument("--type", default="Q4_0")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", tempfile.gettempdir()))
    args = ap.parse_args()

    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    path = Path(args.workdir) / f"mistral-{args.type.lower()}.gguf"
    if not path.exists():
        write_random_gguf(path, "llama", *llama_spec(4096, 32, 32, 8, 14336, 32000, args.type))
    m = load_model(path, make_placement("cuda", args.ngl))
    rng = np.random.default_rng(0)
    state = m.new_state(600)
    prompt = rng.integers(0, m.params.n_vocab, 512).astype(np.int32)
    for _ in range(2):  # warm-up: compiles, fills the memory pool and the page cache
        m.forward(prompt, state, 0)
    _profile(f"pp512, -ngl {args.ngl}", lambda: m.forward(prompt, state, 0), args.top)
    toks = rng.integers(0, m.params.n_vocab, 32).astype(np.int32)
    for i in range(4):
        m.forward(toks[i : i + 1], state, i)

    def decode() -> None:
        for i in range(16):
            m.forward(toks[i : i + 1], state, i)

    _profile(f"16 decode steps, -ngl {args.ngl}", decode, args.top)


if __name__ == "__main__":
    main()
