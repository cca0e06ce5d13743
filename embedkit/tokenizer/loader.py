"""load_tokenizer: build the right Tokenizer from a GGUF file's `tokenizer.ggml.*` metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedkit.tokenizer.base import Tokenizer
from embedkit.tokenizer.vocab import read_vocab


def load_tokenizer(f: Any) -> Tokenizer:
    """Tokenizer of a GGUFFile (or a path to one, or a metadata mapping); TokenizerError if unsupported."""
    md = _metadata(f)
    from embedkit.tokenizer.pretokenize import PRE_ADD_BOS

    vocab = read_vocab(md, PRE_ADD_BOS)
    if vocab.model == "bert":
        from embedkit.tokenizer.wordpiece import WordPieceModel

        return Tokenizer(vocab, WordPieceModel(vocab))
    if vocab.model == "llama":
        from embedkit.tokenizer.spm import SentencePieceModel

        return Tokenizer(vocab, SentencePieceModel(vocab))
    from embedkit.tokenizer.bpe import BPEModel

    return Tokenizer(vocab, BPEModel(vocab))


def _metadata(f: Any) -> Mapping[str, Any]:
    if isinstance(f, Mapping):
        return f
    if hasattr(f, "metadata"):
        return f.metadata
    from embedkit.gguf import GGUFFile

    with GGUFFile(f) as g:
        md = dict(g.metadata)
        # string arrays are views over the mmap: materialise what we keep before it closes
        for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if k in md and hasattr(md[k], "tolist"):
                md[k] = md[k].tolist()
        for k in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            if k in md:
                md[k] = md[k].copy()
        return md
