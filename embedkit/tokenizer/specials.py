"""Split text around special tokens written in it (llama.cpp's `tokenizer_st_partition`).

User-defined tokens are always matched in text; control and unknown tokens only when
`parse_special` is on. Longer tokens are matched first.
"""

from __future__ import annotations

import re

from embedkit.tokenizer.vocab import TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED, Vocab

Fragment = str | int  # raw text, or a token id


class SpecialSplitter:
    """Partition text into raw-text fragments and special-token ids."""

    def __init__(self, vocab: Vocab):
        types = vocab.types
        ids = [int(i) for i in ((types == TYPE_CONTROL) | (types == TYPE_UNKNOWN) | (types == TYPE_USER_DEFINED))
               .nonzero()[0]]
        ids.sort(key=lambda i: -len(vocab.tokens[i].encode("utf-8", "surrogateescape")))
        self._always = [(i, vocab.tokens[i]) for i in ids if types[i] == TYPE_USER_DEFINED]
        self._all = [(i, vocab.tokens[i]) for i in ids]
        self._quick: dict[bool, re.Pattern[str] | None] = {}

    def _has_any(self, text: str, parse_special: bool) -> bool:
        # one regex over all candidate texts tells quickly whether any token occurs at all
        if parse_special not in self._quick:
            toks = self._all if parse_special else self._always
            self._quick[parse_special] = re.compile("|".join(re.escape(t) for _, t in toks)) if toks else None
        pat = self._quick[parse_special]
        return pat is not None and pat.search(text) is not None

    def split(self, text: str, parse_special: bool) -> list[Fragment]:
        """Fragments of `text` in order: str for text still to tokenize, int for a matched token."""
        if not text:
            return []
        if not self._has_any(text, parse_special):
            return [text]
        frags: list[Fragment] = [text]
        # longest first over the whole text, as llama.cpp; only tokens present in the text matter
        present = [(tid, tok) for tid, tok in (self._all if parse_special else self._always) if tok in text]
        for tid, tok in present:
            out: list[Fragment] = []
            for frag in frags:
                if isinstance(frag, int) or tok not in frag:
                    out.append(frag)
                    continue
                parts = frag.split(tok)
                for k, part in enumerate(parts):
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            frags = out
        return frags
