"""Fidelity of the default CPU arithmetic to the model over several texts: prompt batch and one token per step.

    EMBEDKIT_MODELS=/path/to/models [EMBEDKIT_THREADS=1] PYTHONPATH=. nice -n 10 python benchmarks/bench_fidelity.py \
        [--models gemma3-270m,smollm2-135m,qwen2.5-coder-0.5b] [--texts prose,code,...] [--no-prompt]

For each model and text (tests/data/fidelity/prose.txt and benchmarks/data/fidelity/*.txt, their sources in
benchmarks/data/fidelity/README.md): the float64 reference (transformers on the GGUF's dequantized weights,
`embedkit.evaluate.reference`; kept as each position's top-256 log-probabilities under benchmarks/.cache/, which
git ignores, so a rerun skips it), then embedkit's default arithmetic teacher-forced over the same ids as one
prompt batch and one token per step (generation's decode kernels), measured by
`embedkit.evaluate.fidelity.measure_fidelity` as tests/test_fidelity.py does. Prints per text and pooled
over the texts: mean KL(reference || ours) on the reference's support, top-1 agreement, and for every flipped
top-1 the reference's margin between its two best logits (and how far ours went the other way). The kernels
give the same bits on any thread count; on a loaded machine EMBEDKIT_THREADS=1 runs far faster.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from embedkit.backend import make_placement
from embedkit.catalog import resolve_model
from embedkit.evaluate.fidelity import Fidelity, measure_fidelity, top_k_log_probs
from embedkit.models import load_model
from embedkit.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXTS = {
    "prose": ROOT / "tests" / "data" / "fidelity" / "prose.txt",
    "code": ROOT / "benchmarks" / "data" / "fidelity" / "code_textwrap.py.txt",
    "doc": ROOT / "benchmarks" / "data" / "fidelity" / "doc_exceptions.txt",
    "dialogue": ROOT / "benchmarks" / "data" / "fidelity" / "dialogue.txt",
    "notes": ROOT / "benchmarks" / "data" / "fidelity" / "notes.txt",
}
MODELS = ("gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b")
CACHE = ROOT / "benchmarks" / ".cache" / "fidelity"
TOP_K = 256


class References:
    """The float64 reference's top-k of one model, per token sequence: from the cache, or computed (loading
    transformers' model once, on the first miss) and cached."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model = None

    def top_k(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = hashlib.sha256(self.path.name.encode() + ids.tobytes()).hexdigest()[:16]
        file = CACHE / f"{self.path.stem}-{key}.npz"
        if file.exists():
            with np.load(file) as z:
                return z["top_ids"], z["top_log_probs"]
        from embedkit.evaluate.reference import load_reference, reference_log_probs

        if self.model is None:
            self.model = load_reference(self.path)
        top_ids, top_lp = top_k_log_probs(reference_log_probs(self.model, ids), TOP_K)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(file, top_ids=top_ids, top_log_probs=top_lp)
        return top_ids, top_lp


def _flip_lines(res: Fidelity, ref_ids: np.ndarray, ref_lp: np.ndarray) -> list[str]:
    return [f"      flip at {i}: reference margin {ref_lp[i, 0] - ref_lp[i, 1]:.2e}, "
            f"ours the other way by {res.gap[i]:.2e}" for i in res.flips(ref_ids)]


def _row(label: str, kl: np.ndarray, top: np.ndarray, ref_top: np.ndarray) -> str:
    same = int((top == ref_top).sum())
    return (f"  {label:10s} {len(kl):5d} positions: mean KL {kl.mean():.3e} (max {kl.max():.2e}), "
            f"top-1 {100 * same / len(kl):.2f}% ({len(kl) - same} flips)")


def bench_model(name: str, texts: list[str], prompt: bool) -> None:
    """Measures one model over the texts and prints per text and pooled."""
    path = Path(resolve_model(name, kind="generate"))
    tokenizer = load_tokenizer(path)
    refs = References(path)
    model = load_model(path, make_placement("cpu"))
    modes = ("prompt", "decode") if prompt else ("decode",)
    pooled: dict[str, list] = {m: [[], [], []] for m in modes}
    print(f"{name}:", flush=True)
    for text in texts:
        ids = np.asarray(tokenizer.encode(TEXTS[text].read_text(encoding="utf-8"), add_special=True), dtype=np.int32)
        t0 = time.perf_counter()
        ref_ids, ref_lp = refs.top_k(ids)
        t_ref = time.perf_counter() - t0
        for mode in modes:
            t0 = time.perf_counter()
            res = measure_fidelity(model, ids, ref_ids, ref_lp, decode=mode == "decode")
            took = f"  [{time.perf_counter() - t0:.1f} s]"
            print(_row(f"{text} {mode}", res.kl, res.argmax, ref_ids[:, 0]) + took, flush=True)
            for line in _flip_lines(res, ref_ids, ref_lp):
                print(line, flush=True)
            for acc, part in zip(pooled[mode], (res.kl, res.argmax, ref_ids[:, 0]), strict=True):
                acc.append(part)
        print(f"  ({text}: {len(ids)} tokens, reference {t_ref:.1f} s)", flush=True)
    for mode in modes:
        kl, top, ref_top = (np.concatenate(parts) for parts in pooled[mode])
        print(_row(f"pooled {mode}", kl, top, ref_top), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--texts", default=",".join(TEXTS), help=f"comma-separated, of {', '.join(TEXTS)}")
    ap.add_argument("--no-prompt", action="store_true", help="measure only the decode path")
    args = ap.parse_args()
    texts = args.texts.split(",")
    for t in texts:
        if t not in TEXTS:
            raise SystemExit(f"unknown text {t!r}: expected one of {', '.join(TEXTS)}")
    for name in args.models.split(","):
        bench_model(name, texts, not args.no_prompt)


if __name__ == "__main__":
    main()
