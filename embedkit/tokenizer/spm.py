"""SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm_session`.

Spaces become U+2581; the text is split into characters and the adjacent pair whose concatenation
is a vocabulary token with the highest score (leftmost on ties) is merged until none is left.
Characters that end up outside the vocabulary fall back to `<0xXX>` byte tokens. The merge loop
runs in Numba over code points, with the vocabulary in an open-addressing table of code-point spans.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.tokenizer.hashtables import build_pair_table, build_str_table, pair_lookup, str_lookup
from embedkit.tokenizer.heap import heap_pop, heap_push
from embedkit.tokenizer.vocab import Vocab

SPM_SPACE = "\u2581"


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as uint32 (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


class VocabSpans:
    """The vocabulary as one code-point array + offsets, and its hash table."""

    def __init__(self, vocab: Vocab):
        self.cps, self.off = vocab.spans
        self.slots = build_str_table(self.cps, self.off)
        # every pair of adjacent code points inside some token: text between two code points that
        # form no such pair can never be merged across, so the merge loop runs segment by segment
        pairs = np.unique(_inner_pairs(self.cps, self.off))
        self.pair_keys, self.pair_values = build_pair_table(pairs, np.zeros(len(pairs), np.int64))


class SentencePieceModel:
    """Text fragment -> SentencePiece ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._tables: tuple[VocabSpans, np.ndarray, np.ndarray] | None = None

    def tables(self) -> tuple[VocabSpans, np.ndarray, np.ndarray]:
        """(vocabulary spans, -score per token, token id per byte value for byte fallback), built once."""
        if self._tables is None:
            v = self.vocab
            scores = v.scores if v.scores is not None else np.zeros(v.size, np.float32)
            unk = v.unk_id if v.unk_id is not None else 0
            byte_ids = np.array([_byte_token(v, b, unk) for b in range(256)], np.int64)
            self._tables = (VocabSpans(v), -scores.astype(np.float64), byte_ids)
        return self._tables

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (one raw-text fragment, space prefix already applied) to `out`."""
        if not text:
            return
        spans, neg_scores, byte_ids = self.tables()
        cps = codepoints(text.replace(" ", SPM_SPACE))
        ids = spm_encode(cps, spans.slots, spans.cps, spans.off, neg_scores, byte_ids, spans.pair_keys,
                         spans.pair_values)
        out.extend(ids.tolist())


def _byte_token(v: Vocab, b: int, unk: int) -> int:
    """llama.cpp's byte_to_token: <0xXX>, else the byte itself as a one-character token, else unk."""
    for text in (f"<0x{b:02X}>", chr(b) if b < 0x80 else None):
        i = v.find(text) if text is not None else None
        if i is not None:
            return i
    return unk


@njit(cache=True)
def _inner_pairs(tok_cps, tok_off):  # noqa: ANN001, ANN202
    n = 0
    for t in range(len(tok_off) - 1):
        n += max(0, tok_off[t + 1] - tok_off[t] - 1)
    keys = np.empty(n, np.int64)
    m = 0
    for t in range(len(tok_off) - 1):
        for k in range(tok_off[t], tok_off[t + 1] - 1):
            keys[m] = (np.int64(tok_cps[k]) << 32) | np.int64(tok_cps[k + 1])
            m += 1
    return keys


@njit(cache=True)
def spm_encode(cps, slots, tok_cps, tok_off, neg_scores, byte_ids, pair_keys, pair_values):  # noqa: ANN001, ANN201
    """Ids of the code points `cps` (merge loop of llama.cpp's SPM session, then byte fallback)."""
    n = len(cps)
    out = np.empty(4 * n, np.int64)
    length = np.ones(n, np.int64)  # symbol i covers cps[i : i + length[i]]; 0 once merged away
    nxt = np.empty(n, np.int64)
    prv = np.empty(n, np.int64)
    seg_max = 1
    s = 0
    for i in range(1, n + 1):
        if i == n or pair_lookup(pair_keys, pair_values, (np.int64(cps[i - 1]) << 32) | np.int64(cps[i])) < 0:
            seg_max = max(seg_max, i - s)
            s = i
    cap = 3 * seg_max + 4
    hk = np.empty(cap, np.float64)
    hl = np.empty(cap, np.int64)
    hr = np.empty(cap, np.int64)
    hs = np.empty(cap, np.int64)
    m = 0
    s = 0
    for e in range(1, n + 1):
        if e < n and pair_lookup(pair_keys, pair_values, (np.int64(cps[e - 1]) << 32) | np.int64(cps[e])) >= 0:
            continue
        m = _segment(cps, s, e, slots, tok_cps, tok_off, neg_scores, byte_ids, length, nxt, prv, hk, hl, hr, hs,
                     out, m)
        s = e
    return out[:m]


@njit(cache=True)
def _segment(cps, s, e, slots, tok_cps, tok_off, neg_scores, byte_ids, length, nxt, prv, hk, hl, hr, hs, out, m):  # noqa: ANN001, ANN202, E501
    """Merge loop and output for the independent segment cps[s:e]; returns the new output count."""
    for i in range(s, e):
        nxt[i] = i + 1
        prv[i] = i - 1
    nxt[e - 1] = -1
    prv[s] = -1
    hn = 0
    for i in range(s, e - 1):
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
    i = s
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
    return m
