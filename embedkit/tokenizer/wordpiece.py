"""WordPiece with BERT normalisation (`tokenizer.ggml.model = bert`).

Matches Hugging Face's BertNormalizer + BertPreTokenizer + WordPiece: drop control characters,
whitespace to spaces, CJK ideographs split apart, accents stripped and text lower-cased when the
vocabulary is uncased, split on whitespace and punctuation, then greedy longest-match pieces.
GGUF vocabularies converted by llama.cpp mark word starts with U+2581 and drop the `##` of
continuations; vocabularies that kept `##` are handled too.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cached_property

import numpy as np
from numba import njit

from embedkit.tokenizer import unicode_hf
from embedkit.tokenizer.hashtables import build_str_table, str_lookup
from embedkit.tokenizer.unicode_classes import char_class, class_body, class_mask
from embedkit.tokenizer.vocab import TYPE_NORMAL, Vocab

SPM_SPACE = "\u2581"
MAX_WORD_CHARS = 100  # longer words become [UNK] (HF max_input_chars_per_word)
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f"
)
_HAS_ASCII_UPPER = re.compile("[A-Z]")
_ASCII_PUNCT = re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


class WordPieceModel:
    """Text fragment -> WordPiece ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        hf_style = any(t.startswith("##") for t in vocab.tokens[:: max(1, len(vocab.tokens) // 4000)])
        self._first, self._cont = ("", "##") if hf_style else (SPM_SPACE, "")
        normal = [t for t, ty in zip(vocab.tokens, vocab.types.tolist(), strict=True) if ty == TYPE_NORMAL]
        if vocab.lowercase is not None:
            self.uncased = vocab.lowercase
        else:  # uncased vocabularies have (almost) no ASCII capitals outside the [CLS]-style specials
            n_upper = sum(1 for t in normal if _HAS_ASCII_UPPER.search(t))
            self.uncased = n_upper < 0.001 * max(1, len(normal))
        self._cache: dict[str, tuple[int, ...]] = {}
        self.unk_id = vocab.unk_id if vocab.unk_id is not None else (vocab.find("[UNK]") or 0)

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[str], ...]:
        # Cc, Cf, Cs, Co minus \t\n\r (plus U+FFFD) are dropped; unassigned code points are kept, as HF does.
        # HF's categories are older Unicode than ours: its differences come from unicode_hf
        control = re.compile(f"[{_hf_class('C', unicode_hf.HF_CONTROL, unicode_hf.HF_NOT_CONTROL)}\ufffd]")
        ws = re.compile(f"[{char_class('s')}]")
        cjk = re.compile(f"([{_CJK}])")
        punct = _hf_class("P", unicode_hf.HF_PUNCT, unicode_hf.HF_NOT_PUNCT) + _ASCII_PUNCT
        words = re.compile(f"[{punct}]|[^{punct} ]+")
        marks = re.compile(f"[{_hf_class('Mn', unicode_hf.HF_MARK, unicode_hf.HF_NOT_MARK)}]+")
        return control, ws, cjk, words, marks

    def normalize(self, text: str) -> str:
        """BERT normalisation of a whole text (before splitting into words)."""
        control, ws, cjk, _, marks = self._patterns
        text = ws.sub(" ", control.sub(lambda m: " " if m.group() in "\t\n\r" else "", text))
        text = cjk.sub(r" \1 ", text)
        if self.uncased:
            # lower-case char by char as HF does: no final-sigma rule (str.lower() has one)
            text = marks.sub("", unicodedata.normalize("NFD", text)).replace("\u03a3", "\u03c3").lower()
        return text

    def words(self, text: str) -> list[str]:
        """Normalised words and punctuation marks."""
        return self._patterns[3].findall(self.normalize(text))

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (one raw-text fragment) to `out`."""
        cache = self._cache
        words = self.words(text)
        new = [w for w in dict.fromkeys(words) if w not in cache]
        fresh = self._encode_words(new) if new else {}
        if len(cache) < 200_000:
            cache.update(fresh)
        for w in words:
            ids = cache.get(w)
            out.extend(fresh[w] if ids is None else ids)

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        # tokens in llama.cpp's form (word starts marked with U+2581, continuations bare), as code points
        toks = self.vocab.tokens
        if self._first == "":  # vocabulary kept HF's "##" continuations
            toks = [t[2:] if t.startswith("##") else SPM_SPACE + t for t in toks]
        n = len(toks)
        cps = np.frombuffer("".join(toks).encode("utf-32-le", "surrogatepass"), np.uint32)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, toks), np.int64, n), out=off[1:])
        return build_str_table(cps, off), cps, off, int(np.diff(off).max())

    def _encode_words(self, words: list[str]) -> dict[str, tuple[int, ...]]:
        """Greedy longest-match pieces of each word, in one Numba call."""
        slots, tok_cps, tok_off, max_len = self._table
        marked = [SPM_SPACE + w for w in words]
        cps = np.frombuffer("".join(marked).encode("utf-32-le", "surrogatepass"), np.uint32)
        offsets = np.zeros(len(words) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, marked), np.int64, len(marked)), out=offsets[1:])
        ids, id_off = wordpiece_words(cps, offsets, slots, tok_cps, tok_off, max_len, self.unk_id, MAX_WORD_CHARS)
        flat, bounds = ids.tolist(), id_off.tolist()
        return {w: tuple(flat[bounds[k] : bounds[k + 1]]) for k, w in enumerate(words)}


def _hf_class(name: str, add: tuple[tuple[int, int], ...], remove: tuple[tuple[int, int], ...]) -> str:
    """Class body of char_class(name) as Hugging Face tokenizers has it (runs added / removed)."""
    mask = class_mask(name)
    for first, last in add:
        mask[first : last + 1] = True
    for first, last in remove:
        mask[first : last + 1] = False
    return class_body(mask)


@njit(cache=True)
def wordpiece_words(cps, offsets, slots, tok_cps, tok_off, max_len, unk, max_chars):  # noqa: ANN001, ANN201
    """Ids of every marked word cps[offsets[k]:offsets[k+1]] (U+2581 + word) and where each starts."""
    n_words = len(offsets) - 1
    out = np.empty(len(cps) + n_words, np.int64)
    out_off = np.zeros(n_words + 1, np.int64)
    m = 0
    for k in range(n_words):
        a = offsets[k]
        n = offsets[k + 1] - a - 1  # characters of the word, without the mark
        if n > max_chars:
            out[m] = unk
            m += 1
            out_off[k + 1] = m
            continue
        m0 = m
        start = 0
        while start < n:
            found = -1
            end = min(n, start + max_len)
            if start > 0 and cps[a + 1 + start] == 0x2581:
                end = start  # a literal U+2581 would look up word starts: no "##" piece begins with it
            while end > start:
                s0 = a if start == 0 else a + 1 + start  # the first piece keeps the word-start mark
                t = str_lookup(slots, tok_cps, tok_off, cps, s0, a + 1 + end)
                if t >= 0:
                    found = t
                    break
                end -= 1
            if found < 0:  # a part of the word matches nothing: the whole word is [UNK]
                m = m0
                out[m] = unk
                m += 1
                break
            out[m] = found
            m += 1
            start = end
        out_off[k + 1] = m
    return out[:m], out_off
