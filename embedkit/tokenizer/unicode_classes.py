"""Unicode character classes for the pre-tokenizers, as `re` character-class bodies.

Python's `re` has no `\\p{L}`; we build the classes once from `unicodedata` (general category of
every code point, vectorised into runs) and cache them. Whitespace is Unicode's White_Space
property, as llama.cpp's `unicode_set_whitespace` (not `str.isspace`, which adds U+001C..U+001F).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache

import numpy as np

MAX_CODEPOINT = 0x110000
_LOW_END, _HIGH_START = 0x40000, 0xE0000
# major category letter -> small int; Cn (unassigned) stays 0
_MAJOR = {"L": 1, "N": 2, "P": 3, "S": 4, "M": 5, "Z": 6, "C": 7}
LETTER, NUMBER, PUNCT, SYMBOL, MARK, SEPARATOR, OTHER = 1, 2, 3, 4, 5, 6, 7

WHITESPACE = (
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)


@lru_cache(maxsize=1)
def category_table() -> tuple[np.ndarray, np.ndarray]:
    """(major, minor) category per code point: major in 0..7 (0 = unassigned), minor is 'Mn'-style codes."""
    # planes 4..13 are unassigned: skip them (saves more than half of the unicodedata calls)
    names = [unicodedata.category(chr(c)) for c in range(_LOW_END)]
    names += ["Cn"] * (_HIGH_START - _LOW_END)
    names += [unicodedata.category(chr(c)) for c in range(_HIGH_START, MAX_CODEPOINT)]
    codes = {n: k for k, n in enumerate(sorted(set(names)))}
    minor = np.fromiter((codes[n] for n in names), dtype=np.uint8, count=MAX_CODEPOINT)
    lut = np.zeros(len(codes), np.uint8)
    for n, k in codes.items():
        lut[k] = 0 if n == "Cn" else _MAJOR[n[0]]
    minor_names = np.array(sorted(codes, key=codes.get))
    category_table.minor_names = minor_names  # type: ignore[attr-defined]
    return lut[minor], minor


def _ranges(mask: np.ndarray) -> str:
    """A character-class body (no brackets) for the code points where mask is true."""
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0] - 1
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        out.append(_esc(s) if s == e else f"{_esc(s)}-{_esc(e)}")
    return "".join(out)


def _esc(c: int) -> str:
    return f"\\U{c:08x}"


@cache
def char_class(name: str) -> str:
    """Class body for 'L', 'N', 'P', 'S', 'M', 's' (White_Space), 'Mn', 'C' (C* categories), 'Cn'."""
    if name == "s":
        mask = np.zeros(MAX_CODEPOINT, bool)
        mask[WHITESPACE] = True
        return _ranges(mask)
    major, minor = category_table()
    if name in _MAJOR:
        return _ranges(major == _MAJOR[name])
    names = category_table.minor_names  # type: ignore[attr-defined]
    idx = [k for k, n in enumerate(names) if n == name]
    return _ranges(np.isin(minor, idx))
