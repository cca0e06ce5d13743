"""Record llama.cpp's teacher-forced logits for the real test models (dev machine only).

Run: .venv/bin/python tests/data/models/make_logit_goldens.py [model.gguf ...]
(defaults: the three models under /tmp/models). Needs llama-cpp-python, which embedkit never
imports at run or test time. For every prompt it stores, per position, the token ids (llama.cpp's
tokenizer, BOS as the model asks) and llama.cpp's 8 largest logits with their ids (float16),
into `<model stem>.logits.npz`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PROMPTS = {
    "en": "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type with an oil-based ink. Within decades, books became",
    "zh": "人工智能是计算机科学的一个分支，它试图理解智能的本质，"
    "并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "code": 'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers."""\n'
    "    seq = [0, 1]\n    while len(seq) < n:\n        seq.append(seq[-1] + seq[-2])\n"
    "    return seq[:n]\n\n\nif __name__ ==",
}
TOP_K = 8
DEFAULT_MODELS = [
    "/tmp/models/gemma-3-270m-q4_k_m.gguf",
    "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "/tmp/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
]


# llama.cpp run again with one precision setting changed, for the noise floor: how often llama.cpp agrees
# with itself when only its own rounding changes (see README.md).
VARIANTS = {
    "kv_f32": {"type_k": 0, "type_v": 0},  # GGML_TYPE_F32 KV cache (the CLI's -ctk f32 -ctv f32)
    "flash_attn": {"flash_attn": True},  # flash attention (the CLI's -fa on)
}


def _teacher_forced(llm, text: str) -> tuple[list[int], np.ndarray]:
    llm.reset()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    llm.eval(tokens)
    return tokens, np.array(llm.scores[: len(tokens)], dtype=np.float32)


def record(model_path: str, out_dir: Path) -> Path:
    """Evaluate every prompt with llama.cpp (2 threads, n_ctx 512) and save the top-k logits."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    arrays: dict[str, np.ndarray] = {}
    for name, text in PROMPTS.items():
        tokens, scores = _teacher_forced(llm, text)
        top = np.argsort(-scores, axis=1)[:, :TOP_K]
        arrays[f"{name}/tokens"] = np.array(tokens, dtype=np.int32)
        arrays[f"{name}/top_ids"] = top.astype(np.int32)
        arrays[f"{name}/top_logits"] = np.take_along_axis(scores, top, axis=1).astype(np.float16)
    del llm
    for variant, kwargs in VARIANTS.items():
        llm = Llama(model_path=model_path, logits_all=True, n_ctx=512, n_threads=2, verbose=False, **kwargs)
        for name, text in PROMPTS.items():
            _, scores = _teacher_forced(llm, text)
            arrays[f"{name}/top1_{variant}"] = scores.argmax(axis=1).astype(np.int32)
        del llm
    out = out_dir / (Path(model_path).name.removesuffix(".gguf") + ".logits.npz")
    np.savez_compressed(out, **arrays)
    return out


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for path in sys.argv[1:] or DEFAULT_MODELS:
        print(record(path, here))
