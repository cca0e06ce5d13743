"""Tokenizer speed: tokens/s on 1 MB of English and 1 MB of Chinese, embedkit beside Hugging Face
`tokenizers` in the same run, plus the time to open each tokenizer.

English: docstrings of Python's standard library (real prose). Chinese: the zh_CN/zh_TW/zh_HK
message catalogs (.mo) under /usr/share/locale (real translated UI text; repeated if under 1 MB).
HF tokenizers for the GGUF models come from transformers' GGUF conversion; MiniLM from its
tokenizer.json. Both sides get the same list of paragraphs; HF runs single-threaded
(TOKENIZERS_PARALLELISM=false, one encode per paragraph like ours) so the comparison is per core.

Usage: .venv/bin/python benchmarks/bench_tokenizer.py [--models gemma3-270m,qwen2.5-coder-0.5b,...]
"""

from __future__ import annotations

import argparse
import ast
import gettext
import os
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"

MB = 1 << 20


def english(size: int = MB) -> list[str]:
    paras: list[str] = []
    total = 0
    for path in sorted(Path(ast.__file__).parent.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]:
            doc = ast.get_docstring(node, clean=True)
            if doc:
                paras.append(doc)
                total += len(doc.encode())
                if total >= size:
                    return paras
    return paras


def chinese(size: int = MB) -> tuple[list[str], int]:
    msgs: list[str] = []
    for mo in sorted(Path("/usr/share/locale").glob("zh_*/LC_MESSAGES/*.mo")):
        try:
            with mo.open("rb") as fh:
                cat = gettext.GNUTranslations(fh)
        except Exception:  # noqa: BLE001 - a broken catalog is just skipped
            continue
        msgs.extend(v for v in cat._catalog.values()  # noqa: SLF001
                    if isinstance(v, str) and len(v) > 3 and not v.startswith("Project-Id-Version"))
    unique = len("\n".join(msgs).encode())
    out, total = [], 0
    while total < size and msgs:
        for m in msgs:
            out.append(m)
            total += len(m.encode()) + 1
            if total >= size:
                break
    return out, unique


def timed(fn, *args):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    r = fn(*args)
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gemma3-270m,qwen2.5-coder-0.5b,smollm2-135m,all-minilm-l6-v2")
    args = ap.parse_args()
    from embedkit.catalog import ensure_model
    from embedkit.gguf import GGUFFile
    from embedkit.tokenizer import load_tokenizer

    texts = {"English": english()}
    zh, zh_unique = chinese()
    texts["Chinese"] = zh
    for k, v in texts.items():
        print(f"{k}: {len(v)} paragraphs, {sum(len(t.encode()) for t in v) / MB:.2f} MB")
    print(f"(Chinese taken from {zh_unique / MB:.2f} MB of catalog text, repeated only if that is under 1 MB)")

    rows = []
    for name in args.models.split(","):
        path = ensure_model(name)
        t_open, t_first = [], []
        for _ in range(3):  # best of 3: open (GGUF + vocabulary), then the first encode (builds tables)
            t = time.perf_counter()
            with GGUFFile(path) as f:
                tok = load_tokenizer(f)
            t_open.append(time.perf_counter() - t)
            t_first.append(timed(tok.encode, "warm up: build tables, load JIT code")[1])
        t_open, t_first = min(t_open), min(t_first)
        hf = _hf_tokenizer(name, path)
        for lang, paras in texts.items():
            with GGUFFile(path) as f:  # fresh tokenizer: empty word cache
                tok = load_tokenizer(f)
            tok.encode("warm up")
            ours, t_ours = timed(lambda p=paras, tk=tok: [tk.encode(x, add_special=False) for x in p])
            theirs, t_hf = timed(lambda p=paras, h=hf: [h.encode(x, add_special_tokens=False).ids for x in p])
            n = sum(map(len, ours))
            same = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(paras)
            rows.append((name, lang, n, n / t_ours, sum(map(len, theirs)) / t_hf, same, t_open, t_first))
    print()
    print(f"{'model':<22}{'text':<9}{'tokens':>9}{'embedkit tok/s':>16}{'HF tok/s':>12}{'ratio':>7}"
          f"{'same ids':>10}{'open s':>8}{'1st enc s':>10}")
    for name, lang, n, ours, theirs, same, t_open, t_first in rows:
        print(f"{name:<22}{lang:<9}{n:>9}{ours:>16,.0f}{theirs:>12,.0f}{ours / theirs:>7.2f}"
              f"{same:>10.1%}{t_open:>8.3f}{t_first:>10.3f}")


def _hf_tokenizer(name: str, path: Path):  # noqa: ANN202
    if name == "all-minilm-l6-v2":
        from tokenizers import Tokenizer

        hf_json = Path("/tmp/models/all-MiniLM-L6-v2/tokenizer.json")
        tk = Tokenizer.from_file(str(hf_json))
        tk.no_padding()
        tk.no_truncation()
        return tk
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer


if __name__ == "__main__":
    main()
