"""Print where Hugging Face `tokenizers`' BERT classes differ from embedkit's Unicode tables
(dev machine only; never imported by tests).

HF's BertNormalizer / BertPreTokenizer take punctuation, "other" (control) and non-spacing marks from
the Rust crate unicode_categories, whose tables are older than Python's `unicodedata` (and the
Unicode 15.1 additions of unicode_classes): code points assigned or recategorised since are neither
punctuation, nor dropped as control, nor stripped as accents there. Every code point is run through
HF's normalizer and pre-tokenizer and compared with embedkit's classes; the differences are written to
embedkit/tokenizer/unicode_hf.py (used by wordpiece.py).
Usage: .venv/bin/python tests/data/tokenizer/make_hf_bert_tables.py
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import tokenizers
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from embedkit.tokenizer.unicode_classes import MARK, PUNCT, category_table  # noqa: E402

ASCII_PUNCT = set(map(ord, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
pre = BertPreTokenizer()
clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
strip = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
major, minor = category_table()
names = category_table.minor_names
ours_control = {k for k, n in enumerate(names) if n in ("Cc", "Cf", "Co", "Cs")}
mn = [k for k, n in enumerate(names) if n == "Mn"][0]

diff: dict[str, list[int]] = {"punct": [], "not_punct": [], "control": [], "not_control": [], "mark": [],
                              "not_mark": []}
for c in range(0x110000):
    if 0xD800 <= c <= 0xDFFF:
        continue
    ch = chr(c)
    s = "a" + ch + "b"
    hf_punct = [w for w, _ in pre.pre_tokenize_str(s)] == ["a", ch, "b"]
    our_punct = major[c] == PUNCT or c in ASCII_PUNCT
    if hf_punct != our_punct:
        diff["punct" if hf_punct else "not_punct"].append(c)
    if ch not in "\t\n\r":
        hf_drop = clean.normalize_str(s) == "ab"
        our_drop = int(minor[c]) in ours_control or c == 0xFFFD
        if hf_drop != our_drop:
            diff["control" if hf_drop else "not_control"].append(c)
    if unicodedata.normalize("NFD", ch) == ch:
        hf_mark = strip.normalize_str(s) == "ab"
        our_mark = major[c] == MARK and minor[c] == mn
        if hf_mark != our_mark:
            diff["mark" if hf_mark else "not_mark"].append(c)


def runs(cps: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


OUT = Path(__file__).resolve().parents[3] / "embedkit" / "tokenizer" / "unicode_hf.py"
lines = [
    '"""Where Hugging Face `tokenizers`\' BERT classes differ from unicode_classes (generated, do not edit).',
    "",
    f"Made by tests/data/tokenizer/make_hf_bert_tables.py with tokenizers {tokenizers.__version__}, against",
    f"unicodedata {unicodedata.unidata_version} plus the Unicode 15.1 additions: (first, last) code point runs that HF",
    "takes as punctuation / drops as control / strips as accents (HF_*) or does not (HF_NOT_*).",
    '"""',
    "",
]
for key, cps in diff.items():
    items = [f"(0x{a:05X}, 0x{b:05X})," for a, b in runs(cps)]
    lines.append(f"HF_{key.upper()} = (")
    line = "   "
    for item in items:
        if len(line) + len(item) + 1 > 118:
            lines.append(line)
            line = "   "
        line += " " + item
    if items:
        lines.append(line)
    lines.append(")")
OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
print(f"wrote {OUT}: " + ", ".join(f"{k} {len(runs(v))} runs" for k, v in diff.items()))
