"""WordPiece ``tokenizer.json`` -> llama.cpp ``tokenizer.ggml.*`` metadata, as convert_hf_to_gguf.py writes it for BERT.

Mirrors ``BertModel.set_vocab`` and ``gguf.SpecialVocab`` in llama.cpp: tokens become "phantom space"
pieces (``##x`` -> ``x``, ``x`` -> ``\u2581x``, control tokens unchanged), token types NORMAL=1 / CONTROL=3 /
USER_DEFINED=4 / UNUSED=5, special ids from ``tokenizer_config.json`` (``bos`` falls back to ``cls``, ``eos`` to
``sep``) and add_bos/add_eos/add_sep from the ``TemplateProcessing`` post-processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.errors import ConversionError

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
PHANTOM_SPACE = "\u2581"

# tokenizer.ggml.pre that llama.cpp's converter detects (by hashing the encoding of a test string) for
# the uncased BERT WordPiece vocabulary; llama.cpp's WPM tokenizer does not use it to pre-tokenize.
UNCASED_BERT_PRE = "jina-v2-en"
DEFAULT_PRE = "default"


@dataclass
class VocabMetadata:
    """The tokenizer metadata of one model, in the order llama.cpp writes it."""

    tokens: list[str]
    token_types: list[int]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, sep, pad, mask (in this order)
    add_special: dict[str, bool] = field(default_factory=dict)  # bos, eos, sep
    lowercase: bool | None = None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read JSON ({e})") from e


def _token_content(value: Any) -> str | None:
    """A special token in tokenizer_config.json is a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _lowercase_flag(normalizer: dict | None) -> bool | None:
    if not normalizer:
        return None
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return normalizer.get("lowercase")
    if kind == "Sequence":
        flags = [_lowercase_flag(n) for n in normalizer.get("normalizers", [])]
        return next((f for f in reversed(flags) if f is not None), None)
    return None


def read_wordpiece_vocab(hf_dir: Path, vocab_size: int) -> VocabMetadata:
    """Read ``tokenizer.json`` (+ ``tokenizer_config.json``) of a WordPiece model into llama.cpp's metadata."""
    tok_path = hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise ConversionError(f"{hf_dir}: no tokenizer.json (expected a Hugging Face fast tokenizer)")
    tok = _load_json(tok_path)
    model = tok.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConversionError(f"{tok_path}: tokenizer model {model.get('type')!r} is not WordPiece")
    vocab: dict[str, int] = model["vocab"]
    config_path = hf_dir / "tokenizer_config.json"
    config = _load_json(config_path) if config_path.is_file() else {}

    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    for i, t in added.items():
        by_id.setdefault(i, t["content"])
    if by_id and max(by_id) >= vocab_size:
        raise ConversionError(f"{tok_path}: token id {max(by_id)} >= config vocab_size {vocab_size}")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        piece = by_id.get(i)
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        entry = added.get(i)
        if entry is not None:
            looks_special = piece.startswith(("<", "[")) and piece.endswith((">", "]"))
            ttype = TOKEN_CONTROL if entry.get("special") or looks_special else TOKEN_USER_DEFINED
        else:
            ttype = TOKEN_NORMAL
        if ttype != TOKEN_CONTROL:
            piece = piece[2:] if piece.startswith("##") else PHANTOM_SPACE + piece
        tokens.append(piece)
        types.append(ttype)

    def token_id(content: str | None) -> int | None:
        if content is None:
            return None
        return vocab.get(content, next((i for i, t in added.items() if t["content"] == content), None))

    kinds = ("bos", "eos", "unk", "sep", "pad", "mask", "cls")
    names = {kind: _token_content(config.get(f"{kind}_token")) for kind in kinds}
    names["bos"] = names["bos"] or names["cls"]
    names["eos"] = names["eos"] or names["sep"]
    add_special: dict[str, bool] = {}
    post = tok.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single", [])
            if len(single) > 1:
                first = single[0].get("SpecialToken", {}).get("id")
                last = single[-1].get("SpecialToken", {}).get("id")
                if first:
                    names["bos"] = names["bos"] or first
                    add_special["bos"] = first in (names["bos"], names["cls"])
                if last:
                    names["eos"] = names["eos"] or last
                    add_special["eos"] = last == names["eos"]
                # with a trailing special token in <single>, llama.cpp's converter leaves add_sep False
                add_special["sep"] = False if last else add_special.get("sep", False)
        elif proc.get("type") == "RobertaProcessing":
            add_special.update(bos=True, eos=True, sep=True)
    special_ids = {}
    for kind in ("bos", "eos", "unk", "sep", "pad", "mask"):
        tid = token_id(names[kind])
        if tid is not None:
            special_ids[kind] = tid
    lowercase = _lowercase_flag(tok.get("normalizer"))
    pre = UNCASED_BERT_PRE if lowercase else DEFAULT_PRE
    return VocabMetadata(tokens, types, pre, special_ids, add_special, lowercase)
