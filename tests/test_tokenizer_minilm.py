"""MiniLM (all-MiniLM-L6-v2): ids from our WordPiece over the converted GGUF are identical to its
tokenizer.json run through Hugging Face `tokenizers`, on >= 1,000 real strings: the docstrings of
Python's standard library (prose written by people, present wherever Python is) plus the corpus
of the llama.cpp goldens."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from embedkit.gguf import GGUFFile
from embedkit.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent / "data" / "tokenizer"))
from corpus import CORPUS  # noqa: E402

N_STRINGS = 1500


def _stdlib_paragraphs(limit: int) -> list[str]:
    """Docstring paragraphs of the standard library's modules, functions and classes."""
    out: list[str] = []
    seen: set[str] = set()
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)
            for para in (doc or "").split("\n\n"):
                if len(para.strip()) > 20 and para not in seen:
                    seen.add(para)
                    out.append(para)
                    if len(out) >= limit:
                        return out
    return out


@pytest.mark.slow
def test_minilm_matches_hf_tokenizers(minilm_gguf_path: Path, minilm_hf_dir: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(minilm_hf_dir / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    with GGUFFile(minilm_gguf_path) as f:
        tok = load_tokenizer(f)
    texts = _stdlib_paragraphs(N_STRINGS) + list(CORPUS)
    assert len(texts) >= 1000
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    bad = [(t, w, g) for t, w, g in zip(texts, want, tok.encode_batch(texts), strict=True) if w != g]
    assert not bad, f"{len(bad)}/{len(texts)} differ, first: {json.dumps(bad[0], ensure_ascii=False)[:600]}"


@pytest.mark.slow
def test_wordpiece_vocab_with_hash_continuations(minilm_hf_dir: Path) -> None:
    """A bert vocabulary that kept HF's "##" continuations (not llama.cpp's U+2581 word starts)."""
    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer

    spec = json.loads((minilm_hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = np.array([3 if t.startswith("[") and t.endswith("]") else 1 for t in tokens], np.int32)
    md = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.unknown_token_id": vocab["[UNK]"], "tokenizer.ggml.cls_token_id": vocab["[CLS]"],
          "tokenizer.ggml.seperator_token_id": vocab["[SEP]"]}
    tok = load_tokenizer(md)
    hf = HFTokenizer.from_file(str(minilm_hf_dir / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    texts = _stdlib_paragraphs(300) + list(CORPUS)
    want = [e.ids for e in hf.encode_batch(texts)]
    assert tok.encode_batch(texts) == want
