"""Regenerate the float64 reference goldens of tests/test_fidelity.py (needs torch, transformers, gguf).

    EMBEDKIT_MODELS=/path/to/models PYTHONPATH=. nice python tests/data/fidelity/make_goldens.py [MODEL ...]

For each packaged model: tokenize prose.txt with embedkit's tokenizer (BOS as the model asks), run
transformers on the GGUF's dequantized weights (`from_pretrained(dir, gguf_file=...)`, then float64, eager
attention), and keep every position's top-256 log-probabilities (float64, normalised over the whole
vocabulary) with their token ids in <model>.npz. Then measure each embedkit arithmetic against it and print
the mean KL on the stored support beside the full-vocabulary KL (the check that the support suffices).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from embedkit.backend import make_placement
from embedkit.catalog import resolve_model
from embedkit.evaluate.fidelity import log_softmax64, measure_fidelity, model_logits, top_k_log_probs
from embedkit.evaluate.reference import load_reference, reference_log_probs
from embedkit.models import load_model
from embedkit.tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent
MODELS = ("gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b")
TOP_K = 256


def make(name: str) -> None:
    path = Path(resolve_model(name, kind="generate"))
    text = (HERE / "prose.txt").read_text(encoding="utf-8")
    ids = np.asarray(load_tokenizer(path).encode(text, add_special=True), dtype=np.int32)
    ref = reference_log_probs(load_reference(path), ids)
    top_ids, top_lp = top_k_log_probs(ref, TOP_K)
    np.savez_compressed(HERE / f"{name}.npz", ids=ids, top_ids=top_ids, top_log_probs=top_lp)
    rest = 1 - np.exp(top_lp).sum(axis=1)
    print(f"{name}: {len(ids)} tokens, mass outside the top {TOP_K}: mean {rest.mean():.2e}, max {rest.max():.2e}")
    for math in ("float32", "ggml"):
        model = load_model(path, make_placement("cpu", cpu_math=math))
        dec = measure_fidelity(model, ids, top_ids, top_lp, decode=True)
        print(f"  {math:8s} decode (one token per step): mean KL {dec.mean_kl:.3e}, top-1 {100 * dec.top1:.2f}%")
        fid = measure_fidelity(model, ids, top_ids, top_lp)
        full, s = [], 0
        for logits in model_logits(model, ids):
            lq = log_softmax64(logits)
            lp = ref[s : s + len(lq)]
            full.append((np.exp(lp) * (lp - lq)).sum(axis=1))
            s += len(lq)
        print(f"  {math:8s} prompt batch: mean KL {fid.mean_kl:.3e} on the top-{TOP_K} support, "
              f"{np.concatenate(full).mean():.3e} on the full vocabulary; top-1 {100 * fid.top1:.2f}%")


if __name__ == "__main__":
    for name in sys.argv[1:] or MODELS:
        make(name)
