"""Print embedkit's table of Unicode 15.0/15.1 additions (dev machine only; never imported by tests).

llama.cpp's pre-tokenizer classes come from Unicode 15.1 (src/unicode-data.cpp); Python 3.11's
`unicodedata` is Unicode 14.0, so code points assigned in 15.0/15.1 would be unassigned for us.
Usage: pip install --target /tmp/ud2 unicodedata2==15.1.0
       PYTHONPATH=/tmp/ud2 .venv/bin/python tests/data/tokenizer/make_unicode_additions.py
and paste the output over `UNICODE_15_1_ADDITIONS` in embedkit/tokenizer/unicode_classes.py.
"""

from __future__ import annotations

import unicodedata

import unicodedata2

assert unicodedata2.unidata_version == "15.1.0", unicodedata2.unidata_version
runs: list[list] = []
for c in range(0x110000):
    old, new = unicodedata.category(chr(c)), unicodedata2.category(chr(c))
    if old == new:
        continue
    assert old == "Cn", f"U+{c:04X} changed {old} -> {new}: only additions are handled"
    if runs and runs[-1][1] == c - 1 and runs[-1][2] == new:
        runs[-1][1] = c
    else:
        runs.append([c, c, new])
print(f"# {len(runs)} runs: Unicode {unicodedata.unidata_version} -> {unicodedata2.unidata_version}")
print("UNICODE_15_1_ADDITIONS = (")
line = "   "
for a, b, cat in runs:
    item = f' (0x{a:05X}, 0x{b:05X}, "{cat}"),'
    if len(line) + len(item) > 118:
        print(line)
        line = "   "
    line += item
print(line)
print(")")
