"""Make the generation goldens with llama-cpp-python (dev machine only; never imported by tests).

    nice .venv/bin/python tests/data/generate/make_goldens.py /tmp/models

Writes, for each model, ``greedy_<model>.json`` (prompt token ids as llama.cpp tokenizes them, and the
32-token greedy continuation) and ``chat_<model>.json`` (chat prompts rendered by llama.cpp's C++
``llama_chat_apply_template`` and by llama-cpp-python's jinja2 formatter). See README.md.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

HERE = Path(__file__).resolve().parent
GGML_TYPE_F32 = 0
N_GEN = 32

MODELS = {
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "Here is a list of the planets in our solar system:",
    "To make a cup of tea, first",
    "The three laws of thermodynamics state that",
    "中国的首都是",
    "从前有一座山，山里有一座庙，",
    "def fibonacci(n):\n",
    "#include <stdio.h>\n\nint main(void) {\n",
    "SELECT name, COUNT(*) FROM users",
]

BUILTIN_FALLBACK = {"gemma3-270m": "gemma"}

CHATS = [
    [{"role": "user", "content": "Hello! Who are you?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Now say goodbye, 用中文也可以."},
    ],
]


def greedy(llm: llama_cpp.Llama, prompt: str) -> dict:
    """Prompt ids (BOS as the model asks) and N_GEN argmax tokens, ignoring end-of-generation."""
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    return {"prompt": prompt, "prompt_ids": ids, **continue_greedy(llm, ids)}


def continue_greedy(llm: llama_cpp.Llama, ids: list[int]) -> dict:
    """N_GEN argmax tokens after ``ids`` and the top-2 logit margin at each step."""
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(N_GEN):
        # logits_all=False: the context holds one output row, the last token's
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        top2 = np.partition(logits, -2)[-2:]
        tok = int(np.argmax(logits))
        out.append(tok)
        margins.append(round(float(top2[1] - top2[0]), 4))
        llm.eval([tok])
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    return {"output_ids": out, "top2_margins": margins, "text": text}


def cpp_template(template: str, messages: list[dict], add_ass: bool = True) -> str:
    """llama.cpp's C++ llama_chat_apply_template (built-in formats detected from the template text)."""
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(template.encode(), arr, len(messages), add_ass, buf, len(buf))
    if n < 0:
        raise RuntimeError("llama_chat_apply_template failed")
    return buf.raw[:n].decode()


def main(models_dir: Path) -> None:
    for name, file in MODELS.items():
        # llama.cpp's defaults (F16 KV cache) make `output_ids`; a second run with an F32 KV cache
        # (-ctk f32 -ctv f32, the precision embedkit keeps) is stored beside it for diagnosis only.
        llm = llama_cpp.Llama(str(models_dir / file), n_ctx=512, n_batch=512, n_threads=2, seed=0, verbose=False)
        rows = [greedy(llm, p) for p in PROMPTS]
        llm_f32 = llama_cpp.Llama(
            str(models_dir / file), n_ctx=512, n_batch=512, n_threads=2, verbose=False,
            type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
        )
        for row in rows:
            f32 = continue_greedy(llm_f32, row["prompt_ids"])
            row["output_ids_kv_f32"], row["top2_margins_kv_f32"] = f32["output_ids"], f32["top2_margins"]
        del llm_f32
        meta = {"model": name, "file": file, "llama_cpp_python": llama_cpp.__version__, "n_gen": N_GEN,
                "kv_cache": "f16, llama.cpp's default (output_ids); f32 (output_ids_kv_f32)"}
        (HERE / f"greedy_{name}.json").write_text(
            json.dumps({**meta, "cases": rows}, ensure_ascii=False, indent=1) + "\n"
        )
        md = llm.metadata
        # Gemma 3 270M's file has no template: llama.cpp's built-in "gemma" format is the reference there.
        own = md.get("tokenizer.chat_template")
        template = own or BUILTIN_FALLBACK[name]
        vocab_bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
        vocab_eos = llm.detokenize([llm.token_eos()], special=True).decode() if llm.token_eos() >= 0 else ""
        fmt = Jinja2ChatFormatter(own, eos_token=vocab_eos, bos_token=vocab_bos) if own else None
        chats = [
            {
                "messages": msgs,
                "llama_cpp_cpp": cpp_template(template, msgs),
                "jinja2_formatter": fmt(messages=msgs).prompt if fmt else None,
            }
            for msgs in CHATS
        ]
        (HERE / f"chat_{name}.json").write_text(
            json.dumps({**meta, "template": own, "cpp_template_arg": template,
                        "bos_token": vocab_bos, "eos_token": vocab_eos, "cases": chats},
                       ensure_ascii=False, indent=1) + "\n"
        )
        print(name, "done", flush=True)
        del llm


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/models"))
