"""Tokenizers built from GGUF metadata: SentencePiece (llama), byte-level BPE (gpt2), WordPiece (bert)."""

from embedkit.tokenizer.base import Tokenizer
from embedkit.tokenizer.loader import load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]
