"""Hand-written pre-tokenizer splitters (Numba) for the three regexes most BPE models use.

They follow llama.cpp's `unicode_regex_split_custom_gpt2/llama3/qwen2` (src/unicode.cpp), which give
the same pieces as the regexes:
  gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
  llama3: (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+
          |\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
  qwen2:  the same with \\p{N} one digit at a time.
Each piece of the input (given by its end offsets) is split on its own, as llama.cpp does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from embedkit.tokenizer.unicode_classes import LETTER, NUMBER, WHITESPACE, category_table

F_LETTER, F_NUMBER, F_SPACE = 1, 2, 4
MODE_GPT2, MODE_LLAMA3 = 0, 1


@lru_cache(maxsize=1)
def flag_table() -> np.ndarray:
    """uint8 flags per code point: letter, number, White_Space."""
    major, _ = category_table()
    flags = np.where(major == LETTER, F_LETTER, 0).astype(np.uint8)
    flags[major == NUMBER] = F_NUMBER
    flags[WHITESPACE] |= F_SPACE
    return flags


@njit(cache=True, inline="always")
def _flag(cps, flags, pos, end):  # noqa: ANN001, ANN202
    return flags[cps[pos]] if pos < end else 0


@njit(cache=True, inline="always")
def _lower(c):  # noqa: ANN001, ANN202
    return c + 32 if 65 <= c <= 90 else c


@njit(cache=True, inline="always")
def _other(f):  # noqa: ANN001, ANN202
    return (f & (F_LETTER | F_NUMBER | F_SPACE)) == 0


@njit(cache=True)
def split_pieces(cps, flags, piece_ends, mode, max_digits):  # noqa: ANN001, ANN201
    """End offsets of the words of each piece (pieces end at piece_ends)."""
    out = np.empty(len(cps) + 1, np.int64)
    m = 0
    start = 0
    for end in piece_ends:
        pos = start
        while pos < end:
            c = cps[pos]
            f = flags[c]
            # contractions: 's 't 're 've 'm 'll 'd (case-insensitive in llama3 mode)
            if c == 39 and pos + 1 < end:
                c1 = cps[pos + 1] if mode == MODE_GPT2 else _lower(cps[pos + 1])
                if c1 == 115 or c1 == 116 or c1 == 109 or c1 == 100:  # s t m d
                    pos += 2
                    out[m] = pos
                    m += 1
                    continue
                if pos + 2 < end:
                    c2 = cps[pos + 2] if mode == MODE_GPT2 else _lower(cps[pos + 2])
                    if (c1 == 114 and c2 == 101) or (c1 == 118 and c2 == 101) or (c1 == 108 and c2 == 108):
                        pos += 3
                        out[m] = pos
                        m += 1
                        continue
            if mode == MODE_GPT2:
                f2 = _flag(cps, flags, pos + 1, end) if c == 32 else f
                has2 = pos + 1 < end if c == 32 else True
                if has2 and (f2 & F_LETTER):
                    pos += 1 if c == 32 else 0
                    while pos < end and (flags[cps[pos]] & F_LETTER):
                        pos += 1
                    out[m] = pos
                    m += 1
                    continue
                if has2 and (f2 & F_NUMBER):
                    pos += 1 if c == 32 else 0
                    while pos < end and (flags[cps[pos]] & F_NUMBER):
                        pos += 1
                    out[m] = pos
                    m += 1
                    continue
                if has2 and _other(f2):
                    pos += 1 if c == 32 else 0
                    while pos < end and _other(flags[cps[pos]]):
                        pos += 1
                    out[m] = pos
                    m += 1
                    continue
            else:
                # [^\r\n\p{L}\p{N}]?\p{L}+
                if not (c == 13 or c == 10 or (f & F_NUMBER)):
                    if (f & F_LETTER) or (_flag(cps, flags, pos + 1, end) & F_LETTER):
                        pos += 1
                        while pos < end and (flags[cps[pos]] & F_LETTER):
                            pos += 1
                        out[m] = pos
                        m += 1
                        continue
                # \p{N}{1,max_digits}
                if f & F_NUMBER:
                    k = 0
                    while pos < end and (flags[cps[pos]] & F_NUMBER) and k < max_digits:
                        pos += 1
                        k += 1
                    out[m] = pos
                    m += 1
                    continue
                # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
                f2 = _flag(cps, flags, pos + 1, end) if c == 32 else f
                has2 = pos + 1 < end if c == 32 else True
                if has2 and _other(f2):
                    pos += 1 if c == 32 else 0
                    while pos < end and _other(flags[cps[pos]]):
                        pos += 1
                    while pos < end and (cps[pos] == 13 or cps[pos] == 10):
                        pos += 1
                    out[m] = pos
                    m += 1
                    continue
            # whitespace: \s*[\r\n]+ (llama3 mode), \s+(?!\S), \s+
            k = 0
            last_nl = -1
            while pos + k < end and (flags[cps[pos + k]] & F_SPACE):
                if cps[pos + k] == 13 or cps[pos + k] == 10:
                    last_nl = pos + k + 1
                k += 1
            if mode != MODE_GPT2 and last_nl > 0:
                pos = last_nl
            elif k > 1 and pos + k < end:
                pos += k - 1
            elif k > 0:
                pos += k
            else:
                pos += 1  # nothing matches: the character is a piece of its own
            out[m] = pos
            m += 1
        start = end
    return out[:m]
