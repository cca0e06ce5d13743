"""Unicode character classes for the pre-tokenizers, as `re` character-class bodies.

Python's `re` has no `\\p{L}`; we build the classes once from `unicodedata` (general category of
every code point, vectorised into runs) and cache them. Whitespace is Unicode's White_Space
property, as llama.cpp's `unicode_set_whitespace` (not `str.isspace`, which adds U+001C..U+001F).
llama.cpp's tables are Unicode 15.1; code points assigned in 15.0/15.1 that an older `unicodedata`
(Python 3.11 has 14.0) leaves unassigned get their category from UNICODE_15_1_ADDITIONS.
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

# (first, last, category) of the code points assigned in Unicode 15.0 and 15.1, made by
# tests/data/tokenizer/make_unicode_additions.py (unicodedata2 15.1.0 against Python's 14.0)
UNICODE_15_1_ADDITIONS = (
    (0x00CF3, 0x00CF3, "Mc"), (0x00ECE, 0x00ECE, "Mn"), (0x02FFC, 0x02FFF, "So"), (0x031EF, 0x031EF, "So"),
    (0x10EFD, 0x10EFF, "Mn"), (0x1123F, 0x11240, "Lo"), (0x11241, 0x11241, "Mn"), (0x11B00, 0x11B09, "Po"),
    (0x11F00, 0x11F01, "Mn"), (0x11F02, 0x11F02, "Lo"), (0x11F03, 0x11F03, "Mc"), (0x11F04, 0x11F10, "Lo"),
    (0x11F12, 0x11F33, "Lo"), (0x11F34, 0x11F35, "Mc"), (0x11F36, 0x11F3A, "Mn"), (0x11F3E, 0x11F3F, "Mc"),
    (0x11F40, 0x11F40, "Mn"), (0x11F41, 0x11F41, "Mc"), (0x11F42, 0x11F42, "Mn"), (0x11F43, 0x11F4F, "Po"),
    (0x11F50, 0x11F59, "Nd"), (0x1342F, 0x1342F, "Lo"), (0x13439, 0x1343F, "Cf"), (0x13440, 0x13440, "Mn"),
    (0x13441, 0x13446, "Lo"), (0x13447, 0x13455, "Mn"), (0x1B132, 0x1B132, "Lo"), (0x1B155, 0x1B155, "Lo"),
    (0x1D2C0, 0x1D2D3, "No"), (0x1DF25, 0x1DF2A, "Ll"), (0x1E030, 0x1E06D, "Lm"), (0x1E08F, 0x1E08F, "Mn"),
    (0x1E4D0, 0x1E4EA, "Lo"), (0x1E4EB, 0x1E4EB, "Lm"), (0x1E4EC, 0x1E4EF, "Mn"), (0x1E4F0, 0x1E4F9, "Nd"),
    (0x1F6DC, 0x1F6DC, "So"), (0x1F774, 0x1F776, "So"), (0x1F77B, 0x1F77F, "So"), (0x1F7D9, 0x1F7D9, "So"),
    (0x1FA75, 0x1FA77, "So"), (0x1FA87, 0x1FA88, "So"), (0x1FAAD, 0x1FAAF, "So"), (0x1FABB, 0x1FABD, "So"),
    (0x1FABF, 0x1FABF, "So"), (0x1FACE, 0x1FACF, "So"), (0x1FADA, 0x1FADB, "So"), (0x1FAE8, 0x1FAE8, "So"),
    (0x1FAF7, 0x1FAF8, "So"), (0x2B739, 0x2B739, "Lo"), (0x2EBF0, 0x2EE5D, "Lo"), (0x31350, 0x323AF, "Lo"),
)


@lru_cache(maxsize=1)
def category_table() -> tuple[np.ndarray, np.ndarray]:
    """(major, minor) category per code point: major in 0..7 (0 = unassigned), minor is 'Mn'-style codes."""
    # planes 4..13 are unassigned: skip them (saves more than half of the unicodedata calls)
    names = [unicodedata.category(chr(c)) for c in range(_LOW_END)]
    names += ["Cn"] * (_HIGH_START - _LOW_END)
    names += [unicodedata.category(chr(c)) for c in range(_HIGH_START, MAX_CODEPOINT)]
    for first, last, cat in UNICODE_15_1_ADDITIONS:
        for c in range(first, last + 1):
            if names[c] == "Cn":
                names[c] = cat
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
    return class_body(class_mask(name))


def class_body(mask: np.ndarray) -> str:
    """A character-class body (no brackets) for the code points where mask (one bool per code point) is true."""
    return _ranges(mask)


def class_mask(name: str) -> np.ndarray:
    """One bool per code point: in class `name` (as char_class); a new array the caller may change."""
    if name == "s":
        mask = np.zeros(MAX_CODEPOINT, bool)
        mask[WHITESPACE] = True
        return mask
    major, minor = category_table()
    if name in _MAJOR:
        return major == _MAJOR[name]
    names = category_table.minor_names  # type: ignore[attr-defined]
    idx = [k for k, n in enumerate(names) if n == name]
    return np.isin(minor, idx)
