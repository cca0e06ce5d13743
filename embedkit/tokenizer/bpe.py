"""Byte-level BPE (`tokenizer.ggml.model = gpt2`), merge order as llama.cpp's `llm_tokenizer_bpe_session`.

Each pre-tokenized word is split into bytes (each stands for one byte-level character) and the
adjacent pair with the lowest merge rank (leftmost on ties) is merged until no pair has a rank.
The merge loop runs in Numba on symbol ids: merges become a hash table (left id, right id) ->
(rank, merged id); strings that merges produce but the vocabulary lacks get ids past its end.
Results are cached per word, so repeated words (most of real text) cost one dict lookup.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.tokenizer.bytelevel import byte_encoder, latin1_to_bytelevel
from embedkit.tokenizer.hashtables import build_pair_table, pair_lookup
from embedkit.tokenizer.heap import heap_pop, heap_push
from embedkit.tokenizer.pretokenize import PreTokenizer
from embedkit.tokenizer.vocab import Vocab

_CACHE_LIMIT = 500_000


class MergeTable:
    """Merges as id pairs: `keys` = left << 32 | right, `values` = rank << 32 | merged id."""

    def __init__(self, vocab: Vocab):
        t2i, n = vocab.token_to_id, vocab.size
        extra: dict[str, int] = {}

        def sid(s: str) -> int:
            i = t2i.get(s)
            if i is None:
                i = extra.setdefault(s, n + len(extra))
            return i

        keys, values = [], []
        for rank, line in enumerate(vocab.merges or ()):
            p = line.find(" ", 1)  # llama.cpp splits at the first space after the first character
            if p < 0:
                continue
            a, b = line[:p], line[p + 1 :]
            keys.append(sid(a) << 32 | sid(b))
            values.append(rank << 32 | sid(a + b))
        self.slot_keys, self.slot_values = build_pair_table(np.array(keys, np.int64), np.array(values, np.int64))
        self.byte_symbol = np.array([sid(c) for c in byte_encoder()], np.int64)
        # a symbol left outside the vocabulary falls back to single-byte tokens (ASCII only)
        self.byte_fallback = np.array([t2i.get(chr(b), -1) if 0x21 <= b <= 0x7E else -1 for b in range(256)],
                                      np.int64)
        self.n_vocab = n


class BPEModel:
    """Text fragment -> byte-level BPE ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.pretokenizer = PreTokenizer(vocab.pre)
        self._merges: MergeTable | None = None
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def merges(self) -> MergeTable:
        """The merge table, built on first use."""
        if self._merges is None:
            self._merges = MergeTable(self.vocab)
        return self._merges

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (one raw-text fragment) to `out`."""
        words = self.pretokenizer.split(text)
        cache = self._cache
        new = [w for w in dict.fromkeys(words) if w not in cache]
        fresh = self.encode_words(new) if new else {}
        if len(cache) < _CACHE_LIMIT:
            cache.update(fresh)
        for w in words:
            ids = cache.get(w)
            out.extend(fresh[w] if ids is None else ids)

    def encode_words(self, words: list[str]) -> dict[str, tuple[int, ...]]:
        """Ids of each (pre-tokenized) word, in one Numba call."""
        result: dict[str, tuple[int, ...]] = {}
        raw = [w.encode("utf-8", "surrogatepass") for w in words]
        if self.pretokenizer.ignore_merges:  # a word that is a token is taken whole (llama-bpe)
            t2i, table = self.vocab.token_to_id, latin1_to_bytelevel()
            keep = []
            for w, r in zip(words, raw, strict=True):
                tid = t2i.get(r.decode("latin-1").translate(table))
                if tid is None:
                    keep.append((w, r))
                else:
                    result[w] = (tid,)
            if not keep:
                return result
            words, raw = [w for w, _ in keep], [r for _, r in keep]
        m = self.merges
        data = np.frombuffer(b"".join(raw), np.uint8)
        offsets = np.zeros(len(raw) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)), out=offsets[1:])
        ids, id_off = bpe_encode_words(data, offsets, m.byte_symbol, m.slot_keys, m.slot_values, m.n_vocab,
                                       m.byte_fallback)
        flat, bounds = ids.tolist(), id_off.tolist()
        for k, w in enumerate(words):
            result[w] = tuple(flat[bounds[k] : bounds[k + 1]])
        return result


@njit(cache=True)
def bpe_encode_words(data, offsets, byte_symbol, slot_keys, slot_values, n_vocab, byte_fallback):  # noqa: ANN001, ANN201
    """Ids of every word data[offsets[k]:offsets[k+1]] and where each word's ids start."""
    n_words = len(offsets) - 1
    max_len = 1
    for k in range(n_words):
        max_len = max(max_len, offsets[k + 1] - offsets[k])
    sym = np.empty(max_len, np.int64)
    length = np.empty(max_len, np.int64)
    nxt = np.empty(max_len, np.int64)
    prv = np.empty(max_len, np.int64)
    cap = 3 * max_len + 4
    hk = np.empty(cap, np.int64)
    hl = np.empty(cap, np.int64)
    hr = np.empty(cap, np.int64)
    hs = np.empty(cap, np.int64)
    out = np.empty(len(data), np.int64)
    out_off = np.zeros(n_words + 1, np.int64)
    m = 0
    for k in range(n_words):
        base = offsets[k]
        n = offsets[k + 1] - base
        for i in range(n):
            sym[i] = byte_symbol[data[base + i]]
            length[i] = 1
            nxt[i] = i + 1
            prv[i] = i - 1
        nxt[n - 1] = -1
        hn = 0
        for i in range(n - 1):
            v = pair_lookup(slot_keys, slot_values, (sym[i] << 32) | sym[i + 1])
            if v >= 0:
                hn = heap_push(hk, hl, hr, hs, hn, v >> 32, i, i + 1, 2)
        while hn > 0:
            hn = heap_pop(hk, hl, hr, hs, hn)
            left, right, size = hl[hn], hr[hn], hs[hn]
            ll, lr = length[left], length[right]
            if ll == 0 or lr == 0 or ll + lr != size:
                continue  # outdated pair
            v = pair_lookup(slot_keys, slot_values, (sym[left] << 32) | sym[right])
            sym[left] = v & 0xFFFFFFFF
            length[left] = size
            length[right] = 0
            nr = nxt[right]
            nxt[left] = nr
            if nr >= 0:
                prv[nr] = left
                v = pair_lookup(slot_keys, slot_values, (sym[left] << 32) | sym[nr])
                if v >= 0:
                    hn = heap_push(hk, hl, hr, hs, hn, v >> 32, left, nr, size + length[nr])
            pl = prv[left]
            if pl >= 0:
                v = pair_lookup(slot_keys, slot_values, (sym[pl] << 32) | sym[left])
                if v >= 0:
                    hn = heap_push(hk, hl, hr, hs, hn, v >> 32, pl, left, size + length[pl])
        i = 0
        while i != -1:
            if sym[i] < n_vocab:
                out[m] = sym[i]
                m += 1
            else:
                for j in range(base + i, base + i + length[i]):
                    t = byte_fallback[data[j]]
                    if t >= 0:
                        out[m] = t
                        m += 1
            i = nxt[i]
        out_off[k + 1] = m
    return out[:m], out_off
