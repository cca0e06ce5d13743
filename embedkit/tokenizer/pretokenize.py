"""BPE pre-tokenizers: split text into words the way llama.cpp does for each `tokenizer.ggml.pre`.

The regex lists are llama.cpp's (`llm_tokenizer_bpe` in src/llama-vocab.cpp). Each regex of a list
splits every piece left by the previous one; text between matches stays a piece of its own.
`\\p{L}`/`\\p{N}`/`\\p{P}`/`\\p{S}`/`\\p{M}` and `\\s` are translated into explicit `re` classes
(see unicode_classes), so only the standard library is needed.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from embedkit.errors import TokenizerError
from embedkit.tokenizer.splitters import MODE_GPT2, MODE_LLAMA3, flag_table, split_pieces
from embedkit.tokenizer.unicode_classes import char_class

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + (
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# cased letters (HF deepseek-llm pre-tokenizer), escaped so no editor can normalise them
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370"
    "-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-"
    "\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-"
    "\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-"
    "\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a"
    "-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-"
    "\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-"
    "\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-"
    "\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-"
    "\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_CJK_HANGUL = "[一-龥ࠀ-一가-퟿]+"

# canonical pre-tokenizer -> its regex list (llama.cpp's LLAMA_VOCAB_PRE_TYPE_*)
_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    # llama.cpp's hand-written GPT-2 splitter also emits a lone whitespace left between matches:
    # as a last alternative, `\s+` does exactly that and lets findall() cover the whole text
    "gpt2": (_GPT2 + r"|\s+",),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2 + r"|\s+"),
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
                     _CJK_HANGUL, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"),
    "bloom": (r" ?[^(\s|.,!?…。，、।۔،)]+",),
}

# tokenizer.ggml.pre -> (canonical pre-tokenizer, add BOS by default, ignore merges for whole words)
_PRE: dict[str, tuple[str, bool, bool]] = {
    "default": ("default", False, False),
    **{k: ("gpt2", False, False) for k in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de",
                                           "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code",
                                           "roberta-bpe", "gigachat", "trillion")},
    **{k: ("llama3", True, True) for k in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
                                           "pixtral", "midm-2.0", "lfm2")},
    **{k: ("llama3", False, False) for k in ("dbrx", "smaug-bpe")},
    **{k: ("qwen2", False, False) for k in ("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan")},
    "falcon": ("falcon", False, False),
    **{k: ("starcoder", False, False) for k in ("starcoder", "refact", "command-r", "smollm", "codeshell",
                                                "exaone", "minerva-7b")},
    "deepseek-llm": ("deepseek-llm", False, False),
    "deepseek-coder": ("deepseek-coder", False, False),
    **{k: ("bloom", False, False) for k in ("bloom", "poro-chat", "gpt3-finnish")},
}
PRE_ADD_BOS = {name: add_bos for name, (_, add_bos, _) in _PRE.items()}
SUPPORTED_PRE = tuple(sorted(_PRE))


def resolve_pre(pre: str | None) -> tuple[str, bool]:
    """(canonical pre-tokenizer, ignore_merges) for a `tokenizer.ggml.pre` value; TokenizerError if unknown."""
    name = pre or "default"
    if name not in _PRE:
        raise TokenizerError(
            f"tokenizer.ggml.pre = {pre!r} is not a supported BPE pre-tokenizer (supported: {', '.join(SUPPORTED_PRE)})"
        )
    canon, _, ignore_merges = _PRE[name]
    return canon, ignore_merges


def translate(expr: str) -> str:
    """llama.cpp regex -> Python `re` pattern: expand \\p{X}, \\s, \\S into explicit classes."""
    out, i, inside = [], 0, False
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            nxt = expr[i + 1]
            if nxt == "p" and expr[i + 2 : i + 3] == "{":
                end = expr.index("}", i)
                body = char_class(expr[i + 3 : end])
                out.append(body if inside else f"[{body}]")
                i = end + 1
                continue
            if nxt in "sS":
                body = char_class("s")
                if inside:
                    out.append(body)
                else:
                    out.append(f"[{body}]" if nxt == "s" else f"[^{body}]")
                i += 2
                continue
            out.append(expr[i : i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = r"\Z"  # ECMAScript $ is end of input only
        out.append(c)
        i += 1
    return "".join(out)


@cache
def _compile(expr: str) -> re.Pattern[str]:
    return re.compile(translate(expr))


# regexes with a hand-written Numba splitter: regex -> (mode, max digits)
_FAST = {_GPT2 + r"|\s+": (MODE_GPT2, 0), _LLAMA3: (MODE_LLAMA3, 3), _QWEN2: (MODE_LLAMA3, 1)}


def _regex_ends(pat: re.Pattern[str], text: str, ends: list[int]) -> list[int]:
    """Split each piece text[start:end] at the matches of `pat` (text between matches is kept)."""
    out, start = [], 0
    for end in ends:
        pos = start
        for m in pat.finditer(text, start, end):
            s, e = m.span()
            if s > pos:
                out.append(s)
            if e > s:
                out.append(e)
            pos = e
        if pos < end:
            out.append(end)
        start = end
    return out


class PreTokenizer:
    """Splits a raw-text fragment into words (still plain text, not byte-encoded)."""

    def __init__(self, pre: str | None):
        self.canon, self.ignore_merges = resolve_pre(pre)
        self._stages = [_FAST.get(e, e) for e in _REGEXES[self.canon]]

    def split(self, text: str) -> list[str]:
        """Words of `text`, in order; their concatenation is `text`."""
        if not text:
            return []
        cps = None
        ends = [len(text)]
        for stage in self._stages:
            if isinstance(stage, tuple):
                if cps is None:
                    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
                ends = split_pieces(cps, flag_table(), np.array(ends, np.int64), *stage).tolist()
            else:
                ends = _regex_ends(_compile(stage), text, ends)
        bounds = [0, *ends]
        return [text[a:b] for a, b in zip(bounds, ends, strict=False)]

    def split_regex(self, text: str) -> list[str]:
        """split() with Python `re` only (every pre-tokenizer; the reference for the fast path)."""
        pieces = [text]
        for pat in map(_compile, _REGEXES[self.canon]):
            out: list[str] = []
            for piece in pieces:
                found = pat.findall(piece) if not pat.groups else None
                if found is not None and sum(map(len, found)) == len(piece):  # no gaps to keep
                    out.extend(w for w in found if w)
                    continue
                pos = 0
                for m in pat.finditer(piece):
                    s, e = m.span()
                    if s > pos:
                        out.append(piece[pos:s])
                    if e > s:
                        out.append(piece[s:e])
                    pos = e
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces
