"""Real models vs llama.cpp: teacher-forced logits on English, Chinese and code prompts.

Goldens: tests/data/models/*.logits.npz (see the README there): llama.cpp's 8 largest logits per position
(stored as float16) and its top-1. With `--cpu-math ggml` (EMBEDKIT_CPU_MATH=ggml) embedkit runs decoders with
llama.cpp's own arithmetic (embedkit/backend/ggml_cpu.py: 8-bit activation blocks, float16
K/V/Q/probabilities, ggml's summation order), so its logits equal llama.cpp's bit for bit; the comparison
allows only the goldens' float16 rounding (half an ulp of a logit below 32 is <= 0.0078; we allow 0.02) and
asks top-1 agreement at every position (the issue asks for >= 99%). For contrast, llama.cpp agrees with itself
on only 91.9% / 91.9% (Gemma 3), 94.6% / 95.1% (SmolLM2) and 99.2% / 99.2% (Qwen2.5) of these positions when
rerun with an F32 KV cache or with flash attention (`top1_<variant>` in the goldens), and embedkit's float32
arithmetic (the default, which matches transformers to ~2e-6) agreed on 93.4% / 97.3% / 99.2%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedkit.models import load_model

pytestmark = pytest.mark.slow

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
def test_real_model_matches_llama_cpp(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cpu-math ggml: top-1 equal at every position, llama.cpp's top-8 logits within the goldens' float16
    rounding."""
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    path = request.getfixturevalue(fixture)
    top1, top1_clear, max_err, mean_err, itself = _compare(path, DATA / f"{MODELS[fixture]}.logits.npz")
    assert top1 == 1.0, f"top-1 agreement {top1:.4f} (llama.cpp with itself, other precision: {itself})"
    assert top1_clear == 1.0
    assert max_err <= 0.02, f"max-abs error {max_err:.4f} (mean {mean_err:.4f})"


@pytest.mark.parametrize("fixture", list(MODELS))
def test_float32_arithmetic_stays_near_llama_cpp(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default float32 arithmetic (transformers'): top-1 wherever llama.cpp is not near a tie
    (margin >= 0.5), >= 90% overall and at least llama.cpp's agreement with itself under another precision
    setting; top-8 logits within 2.5 (max) / 0.4 (mean)."""
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "float32")
    path = request.getfixturevalue(fixture)
    top1, top1_clear, max_err, mean_err, itself = _compare(path, DATA / f"{MODELS[fixture]}.logits.npz")
    assert top1_clear == 1.0, f"top-1 agreement {top1_clear:.3f} where llama.cpp's margin >= 0.5"
    assert top1 >= 0.90, f"top-1 agreement {top1:.3f}"
    assert top1 >= max(itself.values()), f"top-1 agreement {top1:.4f} below llama.cpp's with itself {itself}"
    assert max_err <= 2.5, f"max-abs error {max_err:.3f}"
    assert mean_err <= 0.4, f"mean-abs error {mean_err:.3f}"
