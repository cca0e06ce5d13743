"""Token pieces (id -> bytes) and a streaming decoder that never splits a UTF-8 sequence."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable

from embedkit.tokenizer.bytelevel import byte_decoder
from embedkit.tokenizer.vocab import (
    TYPE_BYTE,
    TYPE_CONTROL,
    TYPE_UNKNOWN,
    TYPE_UNUSED,
    TYPE_USER_DEFINED,
    Vocab,
)

SPM_SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def make_piece_fn(vocab: Vocab) -> Callable[[int], bytes]:
    """A function id -> the bytes that token stands for in text (control tokens: their own text)."""
    tokens, types, model = vocab.tokens, vocab.types, vocab.model
    cache: dict[int, bytes] = {}
    dec = byte_decoder() if model == "gpt2" else None

    def piece(tid: int) -> bytes:
        b = cache.get(tid)
        if b is not None:
            return b
        text, ty = tokens[tid], int(types[tid])
        if ty in (TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNKNOWN, TYPE_UNUSED):
            b = text.encode("utf-8", "surrogateescape")
        elif model == "gpt2":
            try:
                b = bytes(dec[c] for c in text)
            except KeyError:
                b = text.encode("utf-8", "surrogateescape")
        elif ty == TYPE_BYTE and (m := _BYTE_TOKEN.fullmatch(text)):
            b = bytes([int(m.group(1), 16)])
        else:  # SentencePiece and WordPiece mark spaces with U+2581
            b = text.replace(SPM_SPACE, " ").encode("utf-8", "surrogateescape")
        cache[tid] = b
        return b

    return piece


class IncrementalDecoder:
    """Feed ids one at a time; get text as soon as it forms whole UTF-8 characters."""

    def __init__(self, piece: Callable[[int], bytes], skip: Callable[[int], bool], strip_first_space: bool):
        self._piece, self._skip = piece, skip
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._strip = strip_first_space
        self._started = False

    def feed(self, tid: int) -> str:
        """Text completed by token `tid` (may be empty while a multi-byte character is incomplete)."""
        if self._skip(tid):
            return ""
        b = self._piece(tid)
        if not self._started and b:
            self._started = True
            if self._strip and b[:1] == b" ":
                b = b[1:]
        return self._dec.decode(b)

    def flush(self) -> str:
        """Whatever is held back, with U+FFFD for an incomplete trailing sequence."""
        return self._dec.decode(b"", final=True)
