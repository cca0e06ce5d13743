"""The Tokenizer: special tokens, BOS/EOS rules and decoding around one subword model."""

from __future__ import annotations

from functools import cached_property
from typing import Protocol

from embedkit.tokenizer.decoder import IncrementalDecoder, make_piece_fn
from embedkit.tokenizer.specials import SpecialSplitter
from embedkit.tokenizer.vocab import TYPE_CONTROL, TYPE_UNKNOWN, Vocab


class SubwordModel(Protocol):
    """SentencePiece, byte-level BPE or WordPiece: raw text fragment -> ids."""

    def encode(self, text: str, out: list[int]) -> None: ...


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary (see `load_tokenizer`)."""

    def __init__(self, vocab: Vocab, model: SubwordModel):
        self.vocab = vocab
        self._model = model
        self._piece = make_piece_fn(vocab)

    @cached_property
    def _splitter(self) -> SpecialSplitter:
        return SpecialSplitter(self.vocab)

    @cached_property
    def _special(self) -> frozenset[int]:
        types = self.vocab.types
        return frozenset(((types == TYPE_CONTROL) | (types == TYPE_UNKNOWN)).nonzero()[0].tolist())

    # --- identity -------------------------------------------------------------------------
    model = property(lambda self: self.vocab.model, doc='"llama" | "gpt2" | "bert"')
    pre = property(lambda self: self.vocab.pre, doc="tokenizer.ggml.pre (BPE pre-tokenizer), or None")
    vocab_size = property(lambda self: self.vocab.size, doc="number of tokens")
    bos_id = property(lambda self: self.vocab.bos_id)
    eos_id = property(lambda self: self.vocab.eos_id)
    eot_id = property(lambda self: self.vocab.eot_id)
    unk_id = property(lambda self: self.vocab.unk_id)
    pad_id = property(lambda self: self.vocab.pad_id)
    sep_id = property(lambda self: self.vocab.sep_id)
    cls_id = property(lambda self: self.vocab.cls_id)
    add_bos = property(lambda self: self.vocab.add_bos)
    add_eos = property(lambda self: self.vocab.add_eos)

    def is_eog(self, tid: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, <|im_end|>, <end_of_turn>, ...)."""
        return tid in self.vocab.eog_ids

    def is_special(self, tid: int) -> bool:
        """True for control and unknown tokens (skipped by decode(skip_special=True))."""
        return tid in self._special

    # --- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_special: add BOS/EOS (llama, gpt2) or CLS/SEP (bert) as the metadata asks.
        parse_special: also recognise control tokens written in the text (e.g. "<|im_start|>").
        """
        v, out = self.vocab, []
        if v.model == "bert":
            if add_special and v.cls_id is not None:
                out.append(v.cls_id)
        elif add_special and v.add_bos and v.bos_id is not None:
            out.append(v.bos_id)
        space_prefix = v.model == "llama" and v.add_space_prefix
        prev_special = True
        for frag in self._splitter.split(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if space_prefix and prev_special:
                frag = " " + frag
            self._model.encode(frag, out)
            prev_special = False
        if v.model == "bert":
            if add_special and v.sep_id is not None:
                out.append(v.sep_id)
        elif add_special and v.add_eos and v.eos_id is not None:
            out.append(v.eos_id)
        return out

    def encode_batch(self, texts: list[str], add_special: bool = True, parse_special: bool = False) -> list[list[int]]:
        """encode() for each text."""
        return [self.encode(t, add_special, parse_special) for t in texts]

    # --- decoding -------------------------------------------------------------------------
    def token_to_piece(self, tid: int) -> bytes:
        """The bytes token `tid` stands for (control tokens: their text, e.g. b"<bos>")."""
        if not 0 <= tid < self.vocab.size:
            from embedkit.errors import TokenizerError

            raise TokenizerError(f"token id {tid} is outside the vocabulary (size {self.vocab.size})")
        return self._piece(tid)

    def _strips_space(self) -> bool:
        return self.vocab.model == "bert" or (self.vocab.model == "llama" and self.vocab.add_space_prefix)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Text of `ids`; the inverse of encode(add_special=False) for SentencePiece and BPE."""
        strip, parts, prev_special = self._strips_space(), [], True
        for tid in ids:
            tid = int(tid)
            b = self.token_to_piece(tid)
            if tid in self._special:
                prev_special = True
                if not skip_special:
                    parts.append(b)
                continue
            if strip and prev_special and b[:1] == b" ":
                b = b[1:]
            prev_special = False
            parts.append(b)
        return b"".join(parts).decode("utf-8", "replace")

    def incremental_decoder(self, skip_special: bool = True) -> IncrementalDecoder:
        """A streaming decoder: .feed(id) -> str (holds back incomplete UTF-8), .flush() -> str."""
        skip = self._special.__contains__ if skip_special else (lambda _tid: False)
        return IncrementalDecoder(self.token_to_piece, skip, self._strips_space())

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, vocab_size={self.vocab_size})"
