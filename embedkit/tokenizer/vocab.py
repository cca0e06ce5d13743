"""The vocabulary read from `tokenizer.ggml.*` metadata: tokens, types, scores, special ids, flags.

Defaults per tokenizer model and per BPE pre-tokenizer mirror llama.cpp's `llama_vocab::impl::load`
(src/llama-vocab.cpp); values present in the metadata override them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from embedkit.errors import TokenizerError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TYPE_UNDEFINED = 0
TYPE_NORMAL = 1
TYPE_UNKNOWN = 2
TYPE_CONTROL = 3
TYPE_USER_DEFINED = 4
TYPE_UNUSED = 5
TYPE_BYTE = 6

SUPPORTED_MODELS = ("llama", "gpt2", "bert")

# Special tokens llama.cpp recognises by their text (llama_vocab::impl::load): a match that is not
# typed CONTROL is treated as CONTROL (so plain text never produces it).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>")
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss


@dataclass
class Vocab:
    """Everything a tokenizer needs from the GGUF metadata, with llama.cpp's defaults applied."""

    model: str
    pre: str | None
    tokens: list[str]
    types: np.ndarray  # int32 [n_vocab], tokenizer.ggml.token_type (NORMAL where absent)
    scores: np.ndarray | None  # float32 [n_vocab] (SentencePiece) or None
    merges: list[str] | None = None  # "left right" merge lines (gpt2) or None
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    sep_id: int | None = None
    cls_id: int | None = None
    mask_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    lowercase: bool | None = None  # tokenizer.ggml.normalizer.lowercase (WordPiece), None if absent
    eog_ids: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return len(self.tokens)

    @cached_property
    def token_to_id(self) -> dict[str, int]:
        """text -> id (a later duplicate wins, as in llama.cpp); built on first use."""
        return dict(zip(self.tokens, range(len(self.tokens)), strict=True))

    @cached_property
    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """All tokens' code points in one uint32 array, and each token's offsets into it (n + 1)."""
        n = len(self.tokens)
        cps = np.frombuffer("".join(self.tokens).encode("utf-32-le", "surrogatepass"), np.uint32)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, self.tokens), np.int64, n), out=off[1:])
        return cps, off

    @cached_property
    def _first_and_length(self) -> tuple[np.ndarray, np.ndarray]:
        cps, off = self.spans
        return cps[np.minimum(off[:-1], max(len(cps) - 1, 0))], np.diff(off)

    def find(self, text: str) -> int | None:
        """Id of the token whose text is `text` (the last one if duplicated), or None.

        Before token_to_id is built, candidates are narrowed with numpy (first code point and
        length), so looking up a few texts does not hash the whole vocabulary."""
        if "token_to_id" in self.__dict__ or not text:
            return self.token_to_id.get(text)
        first, length = self._first_and_length
        cand = np.nonzero((length == len(text)) & (first == ord(text[0])))[0]
        for i in cand[::-1].tolist():
            if self.tokens[i] == text:
                return i
        return None


def _id(md: Mapping[str, Any], key: str, default: int | None, n: int) -> int | None:
    v = md.get(key, default)
    if v is None:
        return None
    v = int(v)
    if v < 0 or v == 0xFFFFFFFF:
        return None
    if v >= n:
        raise TokenizerError(f"{key} = {v} is outside the vocabulary (size {n})")
    return v


def read_vocab(md: Mapping[str, Any], pre_add_bos: dict[str, bool] | None = None) -> Vocab:
    """Build a Vocab from a GGUF metadata mapping (`GGUFFile.metadata`)."""
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("the file has no tokenizer (metadata key tokenizer.ggml.model is missing)")
    if model not in SUPPORTED_MODELS:
        raise TokenizerError(
            f"tokenizer.ggml.model = {model!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)})"
        )
    raw_tokens = md.get("tokenizer.ggml.tokens")
    if raw_tokens is None or len(raw_tokens) == 0:
        raise TokenizerError("tokenizer.ggml.tokens is missing or empty")
    tokens = raw_tokens.tolist() if hasattr(raw_tokens, "tolist") else list(raw_tokens)
    n = len(tokens)
    # llama.cpp names empty tokens so they can't collide in the text->id map
    if "" in tokens:
        for i in [i for i, t in enumerate(tokens) if not t]:
            tokens[i] = f"[EMPTY_{i}]"
    types = md.get("tokenizer.ggml.token_type")
    # copies, not views: the tokenizer may outlive the file's mmap
    types = np.full(n, TYPE_NORMAL, np.int32) if types is None else np.array(types, dtype=np.int32)
    scores = md.get("tokenizer.ggml.scores")
    scores = None if scores is None else np.array(scores, dtype=np.float32)
    if len(types) != n or (scores is not None and len(scores) != n):
        raise TokenizerError(
            f"tokenizer.ggml.token_type/scores have {len(types)}/{len(scores) if scores is not None else '-'}"
            f" entries, expected {n} (one per token)"
        )
    pre = md.get("tokenizer.ggml.pre")
    v = Vocab(model=model, pre=pre, tokens=tokens, types=types, scores=scores)

    # defaults per model (llama.cpp), then metadata overrides
    if model == "llama":
        bos, eos, unk, sep, pad = 1, 2, 0, None, None
        v.add_space_prefix, v.add_bos = True, True
    elif model == "bert":
        bos, eos, unk, sep, pad = 101, None, 100, 102, 0
        v.add_bos, v.add_sep = True, True
    else:
        bos, eos, unk, sep, pad = 11, 11, None, None, None
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError("tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)")
        # copied now: the file's mmap may be closed before the first encode
        v.merges = merges.tolist() if hasattr(merges, "tolist") else list(merges)
        v.add_bos = bool((pre_add_bos or {}).get(pre or "default", False))
    g = "tokenizer.ggml."
    v.bos_id = _id(md, g + "bos_token_id", bos if bos is not None and bos < n else None, n)
    v.eos_id = _id(md, g + "eos_token_id", eos if eos is not None and eos < n else None, n)
    v.unk_id = _id(md, g + "unknown_token_id", unk if unk is not None and unk < n else None, n)
    v.sep_id = _id(md, g + "seperator_token_id", sep if sep is not None and sep < n else None, n)
    v.pad_id = _id(md, g + "padding_token_id", pad if pad is not None and pad < n else None, n)
    v.cls_id = _id(md, g + "cls_token_id", None, n)
    v.mask_id = _id(md, g + "mask_token_id", None, n)
    v.eot_id = _id(md, g + "eot_token_id", None, n)
    if model == "bert" and v.cls_id is None:
        v.cls_id = v.bos_id
    v.add_bos = bool(md.get(g + "add_bos_token", v.add_bos))
    v.add_eos = bool(md.get(g + "add_eos_token", v.add_eos))
    v.add_sep = bool(md.get(g + "add_sep_token", v.add_sep))
    v.add_space_prefix = bool(md.get(g + "add_space_prefix", v.add_space_prefix))
    lowercase = md.get(g + "normalizer.lowercase")
    v.lowercase = None if lowercase is None else bool(lowercase)

    _special_tokens_by_text(v, md)
    return v


def _special_tokens_by_text(v: Vocab, md: Mapping[str, Any]) -> None:
    """EOT/EOM/FIM/EOG tokens found by their text, typed CONTROL, as llama.cpp does at load."""

    def control(i: int) -> int:
        if v.types[i] != TYPE_CONTROL:
            v.types[i] = TYPE_CONTROL
        return i

    def first(texts: tuple[str, ...]) -> int | None:
        return next((i for i in map(v.find, texts) if i is not None), None)

    if v.eot_id is None and (i := first(_EOT_TEXTS)) is not None:
        v.eot_id = control(i)
    eom = _id(md, "tokenizer.ggml.eom_token_id", None, v.size)
    if eom is None and (eom := first(_EOM_TEXTS)) is not None:
        control(eom)
    fim = {}
    for kind, texts in _FIM_TEXTS.items():
        fim[kind] = _id(md, f"tokenizer.ggml.fim_{kind}_token_id", None, v.size)
        if fim[kind] is None and (i := first(texts)) is not None:
            fim[kind] = control(i)
    eog = {fim[k] for k in ("pad", "rep", "sep") if fim[k] is not None}
    by_text = {t: i for t in EOG_TEXTS if (i := v.find(t)) is not None}
    eog.update(control(i) for i in by_text.values())
    for t in _ALWAYS_USER_DEFINED:
        if (i := v.find(t)) is not None:
            v.types[i] = TYPE_USER_DEFINED
    eog.update(i for i in (v.eos_id, v.eot_id, eom) if i is not None)
    # o200k_harmony / solar-open: <|end|> is not end-of-generation there
    has_call = "<|call|>" in by_text or "<|calls|>" in by_text
    if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
        eog.discard(by_text["<|end|>"])
        v.types[by_text["<|end|>"]] = TYPE_USER_DEFINED
    if "<|tool_response>" in by_text and "</s>" in by_text:  # gemma4: </s> is text
        eog.discard(by_text["</s>"])
        v.types[by_text["</s>"]] = TYPE_NORMAL
    v.eog_ids = frozenset(eog)
