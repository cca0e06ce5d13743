"""Make the tokenizer goldens with llama-cpp-python (dev machine only; never imported by tests).

Usage: .venv/bin/python tests/data/tokenizer/make_goldens.py MODEL.gguf NAME
Writes tests/data/tokenizer/golden_NAME.json: for every corpus string, the ids llama.cpp gives
with add_special=True (BOS only where the model's metadata asks for it) and parse_special False,
plus the ids with parse_special True.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).parent))
from corpus import CORPUS  # noqa: E402


def main(model: str, name: str) -> None:
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    cases = []
    for text in CORPUS:
        raw = text.encode("utf-8")
        cases.append({
            "text": text,
            "ids": llm.tokenize(raw, add_bos=True, special=False),
            "ids_special": llm.tokenize(raw, add_bos=True, special=True),
        })
    out = Path(__file__).parent / f"golden_{name}.json"
    head = {"model_file": Path(model).name, "llama_cpp_python": llama_cpp.__version__, "add_special": True}
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    body = json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + lines + "\n]}\n"
    json.loads(body)
    out.write_text(body, encoding="utf-8")
    print(f"wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
