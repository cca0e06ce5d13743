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

from embedkit.tokenizer.unicode_classes import char_class
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
        t2i = vocab.token_to_id
        hf_style = any(t.startswith("##") for t in vocab.tokens[:: max(1, len(vocab.tokens) // 4000)])
        self._first, self._cont = ("", "##") if hf_style else (SPM_SPACE, "")
        normal = [t for t, ty in zip(vocab.tokens, vocab.types.tolist(), strict=True) if ty == TYPE_NORMAL]
        if vocab.lowercase is not None:
            self.uncased = vocab.lowercase
        else:  # uncased vocabularies have (almost) no ASCII capitals outside the [CLS]-style specials
            n_upper = sum(1 for t in normal if _HAS_ASCII_UPPER.search(t))
            self.uncased = n_upper < 0.001 * max(1, len(normal))
        self._t2i = t2i
        self._max_len = max(len(t) for t in normal) if normal else 1
        self._cache: dict[str, tuple[int, ...]] = {}
        self.unk_id = vocab.unk_id if vocab.unk_id is not None else t2i.get("[UNK]", 100)

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[str], ...]:
        # Cc, Cf, Cs, Co minus \t\n\r (plus U+FFFD) are dropped; unassigned code points are kept, as HF does
        control = re.compile(f"[{char_class('C')}\ufffd]")
        ws = re.compile(f"[{char_class('s')}]")
        cjk = re.compile(f"([{_CJK}])")
        punct = char_class("P") + _ASCII_PUNCT
        words = re.compile(f"[{punct}]|[^{punct} ]+")
        marks = re.compile(f"[{char_class('Mn')}]+")
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
        for w in self.words(text):
            ids = cache.get(w)
            if ids is None:
                ids = self._word(w)
                if len(cache) < 200_000:
                    cache[w] = ids
            out.extend(ids)

    def _word(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD_CHARS:
            return (self.unk_id,)
        t2i, ids, start, n = self._t2i, [], 0, len(word)
        while start < n:
            prefix = self._first if start == 0 else self._cont
            for end in range(min(n, start + self._max_len), start, -1):
                tid = t2i.get(prefix + word[start:end])
                if tid is not None:
                    ids.append(tid)
                    start = end
                    break
            else:
                return (self.unk_id,)
        return tuple(ids)
