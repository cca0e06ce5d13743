"""Real models vs llama.cpp: teacher-forced logits on English, Chinese and code prompts.

Goldens: tests/data/models/*.logits.npz (see the README there). llama.cpp rounds activations to
8 bits inside quantized matmuls, keeps the KV cache in float16 and more; we compute in float32
and match Hugging Face transformers run on the same dequantized weights to ~2e-6 relative error
(tests/data/models/check_hf_agreement.py). transformers itself agrees with llama.cpp's top-1 on
93.4% (Gemma 3 270M), 97.3% (SmolLM2) and 99.2% (Qwen2.5-Coder) of these positions, every
disagreement being a near tie (llama.cpp's top-2 margin < 0.44). So the tolerances are:
top-1 agreement at every position where llama.cpp's margin is >= 0.5, >= 90% overall, and on
llama.cpp's 8 largest logits max-abs error <= 2.5 and mean-abs error <= 0.4.

llama.cpp's own noise floor: rerun with an F32 KV cache, or with flash attention, llama.cpp agrees with its
default run on 91.9% / 91.9% (Gemma 3), 94.6% / 95.1% (SmolLM2) and 99.2% / 99.2% (Qwen2.5) of these
positions (`top1_<variant>` in the goldens). Its reduced-precision steps turn ulp-sized differences into
logit changes of ~0.2 (README in tests/data/models), so no engine that is not bit-identical to llama.cpp's
CPU kernels agrees with it more than that; we require at least that agreement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedkit.models import load_model

DATA = Path(__file__).resolve().parent / "data" / "models"
MODELS = {
    "gemma_path": "gemma-3-270m-q4_k_m",
    "smollm_path": "SmolLM2-135M-Instruct.Q4_1",
    "qwen_path": "qwen2.5-coder-0.5b-instruct-q4_k_m",
}


VARIANTS = ("kv_f32", "flash_attn")  # llama.cpp rerun with an F32 KV cache / with flash attention


def _compare(model_path: Path, golden: Path) -> tuple[float, float, float, float, dict[str, float]]:
    """(overall top-1 agreement, agreement where llama.cpp's margin >= 0.5, max-abs, mean-abs error,
    {variant: llama.cpp's top-1 agreement with itself when run with that variant})."""
    g = np.load(golden)
    m = load_model(model_path)
    agree, clear, max_err, abs_errs = [], [], 0.0, []
    itself: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    for name in sorted({k.split("/")[0] for k in g.files}):
        tokens = g[f"{name}/tokens"]
        top_ids = g[f"{name}/top_ids"]
        ref = g[f"{name}/top_logits"].astype(np.float32)
        logits = m.forward(tokens, m.new_state(len(tokens)), 0, all_positions=True)
        for v in VARIANTS:
            itself[v].append(g[f"{name}/top1_{v}"] == top_ids[:, 0])
        agree.append(logits.argmax(axis=1) == top_ids[:, 0])
        clear.append(ref[:, 0] - ref[:, 1] >= 0.5)
        err = np.abs(np.take_along_axis(logits, top_ids, axis=1) - ref)
        max_err = max(max_err, float(err.max()))
        abs_errs.append(err.ravel())
    agree_all, clear_all = np.concatenate(agree), np.concatenate(clear)
    floor = {v: float(np.concatenate(a).mean()) for v, a in itself.items()}
    return (
        float(agree_all.mean()), float(agree_all[clear_all].mean()), max_err, float(np.concatenate(abs_errs).mean()),
        floor,
    )  # fmt: skip


@pytest.mark.parametrize("fixture", list(MODELS))
def test_real_model_matches_llama_cpp(fixture: str, request: pytest.FixtureRequest) -> None:
    """Top-1 agrees wherever llama.cpp is not near a tie; top-8 logits within 2.5 (max) / 0.4 (mean)."""
    path = request.getfixturevalue(fixture)
    top1, top1_clear, max_err, mean_err, itself = _compare(path, DATA / f"{MODELS[fixture]}.logits.npz")
    assert top1_clear == 1.0, f"top-1 agreement {top1_clear:.3f} where llama.cpp's margin >= 0.5"
    assert top1 >= 0.90, f"top-1 agreement {top1:.3f}"
    # the noise floor: llama.cpp agrees with itself this often when only its own rounding changes
    assert top1 >= max(itself.values()), f"top-1 agreement {top1:.4f} below llama.cpp's with itself {itself}"
    assert max_err <= 2.5, f"max-abs error {max_err:.3f}"
    assert mean_err <= 0.4, f"mean-abs error {mean_err:.3f}"
