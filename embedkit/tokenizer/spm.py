"""SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm_session`.

Spaces become U+2581; the text is split into characters and the adjacent pair whose concatenation
is a vocabulary token with the highest score (leftmost on ties) is merged until none is left.
Characters that end up outside the vocabulary fall back to `<0xXX>` byte tokens. The merge loop
runs in Numba over code points, with the vocabulary in an open-addressing table of code-point spans.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.tokenizer.hashtables import build_str_table, str_lookup
from embedkit.tokenizer.heap import heap_pop, heap_push
from embedkit.tokenizer.vocab import Vocab

SPM_SPACE = "\u2581"


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as uint32 (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


class VocabSpans:
    """The vocabulary as one code-point array + offsets, and its hash table."""

    def __init__(self, tokens: list[str]):
        self.cps = codepoints("".join(tokens))
        self.off = np.zeros(len(tokens) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, tokens), np.int64, len(tokens)), out=self.off[1:])
        self.slots = build_str_table(self.cps, self.off)


class SentencePieceModel:
    """Text fragment -> SentencePiece ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._tables: tuple[VocabSpans, np.ndarray, np.ndarray] | None = None

    def tables(self) -> tuple[VocabSpans, np.ndarray, np.ndarray]:
        """(vocabulary spans, -score per token, token id per byte value for byte fallback), built once."""
        if self._tables is None:
            v, t2i = self.vocab, self.vocab.token_to_id
            scores = v.scores if v.scores is not None else np.zeros(v.size, np.float32)
            unk = v.unk_id if v.unk_id is not None else 0
            byte_ids = np.array([t2i.get(f"<0x{b:02X}>", t2i.get(chr(b), unk) if b < 0x80 else unk)
                                 for b in range(256)], np.int64)
            self._tables = (VocabSpans(v.tokens), -scores.astype(np.float64), byte_ids)
        return self._tables

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (one raw-text fragment, space prefix already applied) to `out`."""
        if not text:
            return
        spans, neg_scores, byte_ids = self.tables()
        cps = codepoints(text.replace(" ", SPM_SPACE))
        out.extend(spm_encode(cps, spans.slots, spans.cps, spans.off, neg_scores, byte_ids).tolist())


@njit(cache=True)
def spm_encode(cps, slots, tok_cps, tok_off, neg_scores, byte_ids):  # noqa: ANN001, ANN201
    """Ids of the code points `cps` (merge loop of llama.cpp's SPM session, then byte fallback)."""
    n = len(cps)
    length = np.ones(n, np.int64)  # symbol i covers cps[i : i + length[i]]; 0 once merged away
    nxt = np.arange(1, n + 1)
    nxt[n - 1] = -1
    prv = np.arange(-1, n - 1)
    cap = 3 * n + 4
    hk = np.empty(cap, np.float64)
    hl = np.empty(cap, np.int64)
    hr = np.empty(cap, np.int64)
    hs = np.empty(cap, np.int64)
    hn = 0
    for i in range(n - 1):
        t = str_lookup(slots, tok_cps, tok_off, cps, i, i + 2)
        if t >= 0:
            hn = heap_push(hk, hl, hr, hs, hn, neg_scores[t], i, i + 1, 2)
    while hn > 0:
        hn = heap_pop(hk, hl, hr, hs, hn)
        left, right, size = hl[hn], hr[hn], hs[hn]
        ll, lr = length[left], length[right]
        if ll == 0 or lr == 0 or ll + lr != size:
            continue  # outdated pair
        length[left] = size
        length[right] = 0
        nr = nxt[right]
        nxt[left] = nr
        if nr >= 0:
            prv[nr] = left
            end = nr + length[nr]
            t = str_lookup(slots, tok_cps, tok_off, cps, left, end)
            if t >= 0:
                hn = heap_push(hk, hl, hr, hs, hn, neg_scores[t], left, nr, end - left)
        pl = prv[left]
        if pl >= 0:
            end = left + size
            t = str_lookup(slots, tok_cps, tok_off, cps, pl, end)
            if t >= 0:
                hn = heap_push(hk, hl, hr, hs, hn, neg_scores[t], pl, left, end - pl)
    out = np.empty(4 * n, np.int64)
    m = 0
    i = 0
    while i != -1:
        t = str_lookup(slots, tok_cps, tok_off, cps, i, i + length[i])
        if t >= 0:
            out[m] = t
            m += 1
        else:  # byte fallback over the UTF-8 encoding of the symbol
            for k in range(i, i + length[i]):
                c = cps[k]
                if c < 0x80:
                    out[m] = byte_ids[c]
                    m += 1
                elif c < 0x800:
                    out[m] = byte_ids[0xC0 | (c >> 6)]
                    out[m + 1] = byte_ids[0x80 | (c & 0x3F)]
                    m += 2
                elif c < 0x10000:
                    out[m] = byte_ids[0xE0 | (c >> 12)]
                    out[m + 1] = byte_ids[0x80 | ((c >> 6) & 0x3F)]
                    out[m + 2] = byte_ids[0x80 | (c & 0x3F)]
                    m += 3
                else:
                    out[m] = byte_ids[0xF0 | (c >> 18)]
                    out[m + 1] = byte_ids[0x80 | ((c >> 12) & 0x3F)]
                    out[m + 2] = byte_ids[0x80 | ((c >> 6) & 0x3F)]
                    out[m + 3] = byte_ids[0x80 | (c & 0x3F)]
                    m += 4
        i = nxt[i]
    return out[:m]
