"""Differential fuzz of embedkit's tokenizers against llama.cpp (dev machine only; never imported by tests).

Usage: .venv/bin/python tests/data/tokenizer/fuzz_llama_cpp.py [--n 2000] [--seed 0] [--only NAME ...]
                                                               [--out mismatches.json]

Draws seeded random strings built to hit tokenizer edge cases (whitespace runs, CRLF, digits,
punctuation, contractions, many scripts, emoji sequences, combining marks, NFD forms, Unicode
spaces, control characters, code points of every plane including recent Unicode additions,
special-token look-alikes, very long words) and compares, for every vocabulary:
  - ids: embedkit `encode(text, add_special, parse_special)` vs llama.cpp's `llama_tokenize` for the
    four combinations of add_special (BOS/EOS, CLS/SEP) and parse_special;
  - text: embedkit `decode(ids)` vs llama.cpp's `llama_detokenize(ids, remove_special=False,
    unparse_special=True)` on the ids of encode(text, add_special=False), and decode(encode(text)) == text
    for SentencePiece/BPE (SentencePiece: texts without U+2581, which it can't tell from a space);
and for MiniLM (WordPiece, converted by embedkit) the ids vs Hugging Face `tokenizers` on the same strings.
Needs llama-cpp-python (and `tokenizers` for MiniLM). Prints a summary per vocabulary and writes
the mismatching cases (up to 50 per vocabulary and check) to --out.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import re
import sys
import time
import unicodedata
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from embedkit.gguf import GGUFFile  # noqa: E402
from embedkit.tokenizer import load_tokenizer  # noqa: E402

VOCAB_DIR = REPO / "tests" / "data" / "llama-vocab"
REAL = {"gemma3": "gemma3-270m", "smollm2": "smollm2-135m", "qwen2.5-coder": "qwen2.5-coder-0.5b"}

# --- string generator ---------------------------------------------------------------------------
WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \t ", "\t\n",
      " \r\n ", "    ", "\n\n\n", "\v", "\f"]
USPACE = ["\u00a0", "\u1680", *map(chr, range(0x2000, 0x200C)), "\u202f", "\u205f", "\u3000", "\u0085",
          "\u2028", "\u2029", "\u180e", "\ufeff", "\u200c", "\u200d", "\u2060"]
CONTROL = [*map(chr, range(0x00, 0x09)), "\x0e", "\x1b", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f",
           *map(chr, range(0x80, 0xA0))]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "–", "«", "»", "¿", "¡", "。", "，", "、", "「",
                                                    "」", "・", "‘", "’", "“", "”", "•", "§", "©", "®", "€",
                                                    "£", "¥", "°", "±", "×", "÷", "→", "∑", "∞", "½", "²", "³"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'lL",
                "'D", "'", "''", "'x", "n't", "’s", "'s'"]
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "accents": "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿÀÉÎÕÜßœŒłŁřŘšŠžŽğĞışŞđĐươƯ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґ",
    "greek": "αβγδεζηθικλμνξοπρσςτυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώϊϋΐΰ",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんがぎぐげご"
            "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンーッャュョ",
    "hangul": "가나다라마바사아자차카타파하한국어문장입니다안녕하세요감사합니다",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهويءآأؤإئةى",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשתךםןףץ",
    "devanagari": "अआइईउऊऋएऐओऔकखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसहािीुूृेैोौंःँ्",
    "thai": "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮะัาำิีึืฺุู฿เแโใไๅๆ็่้๊๋์",
    "fullwidth": "ＡＢＣａｂｃ０１２３！？（）",
}
DIGITS_OTHER = "٠١٢٣٤٥٦٧٨٩०१२३४५६७८९๐๑๒๓໐໑০১²³¹¼½¾ⅠⅡⅢⅰⅱ①②③〇"
EMOJI = ["😀", "😃", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🇯🇵", "🇺🇸", "🇩🇪", "❤️", "❤", "☺️",
         "🦙", "🚀", "✨", "🧑‍🤝‍🧑", "🫠", "🫶🏼", "🙂‍↔️", "🐦‍🔥", "🍋‍🟩", "1️⃣", "#️⃣", "©️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "👁️‍🗨️"]
SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<bos>", "<eos>", "<mask>", "<|im_start|>", "<|im_end|>",
            "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<|begin_of_text|>", "<|end_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "[PAD]", "<0x41>", "<0x0A>",
            "<|fim_prefix|>", "<|fim_middle|>", "<|file_sep|>", "<|im_", "im_start|>", "<<|im_start|>>",
            "<start_of_image>", "<|im_start|><|im_start|>", "<s><s>", "<|endoftext|>user", "[PAD151646]",
            "<unused0>", "<|reserved_special_token_0|>", ">>ABSTRACT<<", "<|EOT|>"]
# ranges assigned in Unicode 15.0, 15.1, 16.0 and 17.0 (Python 3.11's unicodedata is 14.0)
RECENT = [(0x1F6DC, 0x1F6DC), (0x1FA75, 0x1FA77), (0x1FAAD, 0x1FAAF), (0x1FABB, 0x1FABD), (0x1FAE8, 0x1FAE8),
          (0x11F00, 0x11F10), (0x11F12, 0x11F3A), (0x11F3E, 0x11F59), (0x1E4D0, 0x1E4F9), (0x31350, 0x323AF),
          (0x1D2C0, 0x1D2D3), (0x1E030, 0x1E06D), (0x11B00, 0x11B09), (0x0CF3, 0x0CF3), (0x0ECE, 0x0ECE),
          (0x10EFD, 0x10EFF), (0x1123F, 0x11241), (0x1DF25, 0x1DF2A), (0x2EBF0, 0x2EE5D), (0x2FFC, 0x2FFF),
          (0x31EF, 0x31EF), (0x10D40, 0x10D65), (0x10D69, 0x10D85), (0x16100, 0x16139), (0x16D40, 0x16D79),
          (0x1E5D0, 0x1E5FA), (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9), (0x105C0, 0x105F3), (0x11380, 0x113E2),
          (0x1CC00, 0x1CCF9), (0x1CD00, 0x1CEB3), (0x13460, 0x143FA), (0x116D0, 0x116E3), (0xA7CB, 0xA7CD),
          (0xA7DA, 0xA7DC), (0x1C89, 0x1C8A), (0x0897, 0x0897), (0x2427, 0x2429), (0x31E4, 0x31E5),
          (0x1B4E, 0x1B4F), (0x1B7F, 0x1B7F), (0x10EC2, 0x10EC4), (0x1FA89, 0x1FA89), (0x1FAE9, 0x1FAE9),
          (0x1F8B2, 0x1F8BB), (0x1F8C0, 0x1F8C1), (0x1CEC0, 0x1CED0), (0x10940, 0x10959), (0x11DB0, 0x11DDB),
          (0x16EA0, 0x16EB8), (0x1E6C0, 0x1E6DE), (0x18D80, 0x18DF2), (0x323B0, 0x3347F)]
PLANES = [(0x20, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x370, 0x1FFF), (0x2000, 0x2BFF), (0x2C00, 0xD7FF),
          (0xE000, 0xF8FF), (0xF900, 0xFFFD), (0xFFFE, 0xFFFF), (0x10000, 0x1FFFF), (0x20000, 0x2FFFF),
          (0x30000, 0x3FFFF), (0x40000, 0xDFFFF), (0xE0000, 0xE01EF), (0xF0000, 0x10FFFF)]


def _cp(r: random.Random, lo: int, hi: int) -> str:
    c = r.randint(lo, hi)
    return chr(c if not 0xD800 <= c <= 0xDFFF else 0xFFFD)


def _word(r: random.Random, alphabet: str, lo: int = 1, hi: int = 8) -> str:
    return "".join(r.choice(alphabet) for _ in range(r.randint(lo, hi)))


def _piece(r: random.Random) -> str:
    k = r.randrange(22)
    if k == 0:
        return r.choice(WS)
    if k == 1:
        return "".join(r.choice(WS) for _ in range(r.randint(1, 4)))
    if k == 2:
        return _word(r, "0123456789", 1, r.choice((3, 6, 12, 30)))
    if k == 3:
        return "".join(r.choice(PUNCT) for _ in range(r.randint(1, 6)))
    if k == 4:
        return _word(r, SCRIPTS["latin"], 1, 6) + r.choice(CONTRACTIONS)
    if k in (5, 6, 7):
        return _word(r, SCRIPTS[r.choice(list(SCRIPTS))])
    if k == 8:
        return "".join(r.choice(EMOJI) for _ in range(r.randint(1, 3)))
    if k == 9:  # combining marks on letters
        return "".join(r.choice("aeiouAEIOnc") + "".join(_cp(r, 0x300, 0x36F) for _ in range(r.randint(1, 3)))
                       for _ in range(r.randint(1, 3)))
    if k == 10:  # NFD / NFKD forms of accented text
        w = _word(r, SCRIPTS["accents"] + SCRIPTS["greek"] + SCRIPTS["hangul"] + "ﬁﬂ①㎏", 1, 6)
        return unicodedata.normalize(r.choice(("NFD", "NFKD", "NFC")), w)
    if k == 11:
        return "".join(r.choice(USPACE) for _ in range(r.randint(1, 3)))
    if k == 12:
        return r.choice(CONTROL)
    if k in (13, 14):
        lo, hi = r.choice(PLANES)
        return "".join(_cp(r, lo, hi) for _ in range(r.randint(1, 3)))
    if k == 15:
        lo, hi = r.choice(RECENT)
        return "".join(_cp(r, lo, hi) for _ in range(r.randint(1, 3)))
    if k in (16, 17):
        return r.choice(SPECIALS)
    if k == 18:  # very long words
        n = r.choice((50, 101, 300, 1000))
        kind = r.randrange(4)
        if kind == 0:
            return r.choice("ab") * n
        if kind == 1:
            return _word(r, SCRIPTS["latin"], n, n)
        if kind == 2:
            return _word(r, "0123456789", n, n)
        return _word(r, SCRIPTS[r.choice(("cjk", "cyrillic", "thai"))], n // 4, n // 4)
    if k == 19:
        return _word(r, DIGITS_OTHER, 1, 5)
    if k == 20:
        return r.choice(("Hello", "world", "the", "The", "and", "I", "you", "▁", "▁▁x", "x▁", "__", "ĠĠ", "Ċ"))
    return _word(r, SCRIPTS["latin"], 1, 10)


def random_text(r: random.Random) -> str:
    parts = [_piece(r) for _ in range(r.randint(1, 8))]
    sep = r.choice(("", " ", "", r.choice(WS)))
    text = sep.join(parts)
    if r.random() < 0.15:
        text = r.choice(WS + USPACE) + text
    if r.random() < 0.15:
        text += r.choice(WS + USPACE)
    return text


def random_texts(seed: int, n: int) -> list[str]:
    r = random.Random(seed)
    return [random_text(r) for _ in range(n)]


# --- references ---------------------------------------------------------------------------------
class LlamaRef:
    def __init__(self, path: Path):
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, ids: list[int]) -> bytes:
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 16 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1


def clean_spaces(text: str) -> str:
    """The clean-up llama.cpp's detokenize applies when the vocabulary asks for it (HF's
    clean_up_tokenization_spaces): no space before ? ! . , or the contractions 's 'm 're 've, and " ' " -> "'"."""
    text = re.sub(r" ([?!.,])", r"\1", text)
    text = text.replace(" ' ", "'")
    return re.sub(r" '(s|m|re|ve)", r"'\1", text)


def detok_class(want: str, got: str, kind: str) -> str:
    """Name the class of a detokenize mismatch."""
    if clean_spaces(got) == want:
        return kind + ": llama.cpp cleans spaces (clean_up_tokenization_spaces)"
    return kind


def vocab_paths() -> dict[str, Path]:
    from embedkit.catalog import ensure_model

    out = {name: Path(ensure_model(key)) for name, key in REAL.items()}
    for p in sorted(VOCAB_DIR.glob("ggml-vocab-*.gguf")):
        out[p.stem.removeprefix("ggml-vocab-")] = p
    return out


def fuzz_vocab(name: str, path: Path, texts: list[str], keep: int) -> dict:
    try:
        ref = LlamaRef(path)
    except Exception as e:  # noqa: BLE001
        return {"vocab": name, "skipped": f"llama-cpp-python can't load it: {e}"}
    with GGUFFile(path) as f:
        tok = load_tokenizer(f)
    res: dict = {"vocab": name, "strings": len(texts), "ids_compared": 0, "ids_bad": 0, "detok_compared": 0,
                 "detok_bad": 0, "roundtrip_bad": 0, "examples": {}}

    def bad(kind: str, case: dict) -> None:
        ex = res["examples"].setdefault(kind, [])
        if len(ex) < keep:
            ex.append(case)

    for text in texts:
        for add_special in (False, True):
            for parse_special in (False, True):
                want = ref.tokenize(text, add_special, parse_special)
                got = tok.encode(text, add_special=add_special, parse_special=parse_special)
                res["ids_compared"] += 1
                if got != want:
                    res["ids_bad"] += 1
                    bad(f"ids add_special={add_special} parse_special={parse_special}",
                        {"text": text, "want": want, "got": got})
                elif add_special and parse_special and tok.model != "bert":
                    res["detok_compared"] += 1
                    w = ref.detokenize(want).decode("utf-8", "replace")
                    g = tok.decode(got)
                    if w != g:
                        res["detok_bad"] += 1
                        bad(detok_class(w, g, "detokenize (bos, specials)"),
                            {"text": text, "ids": want, "want": w, "got": g})
        if tok.model == "bert":
            continue
        ids = tok.encode(text, add_special=False)
        res["detok_compared"] += 1
        w = ref.detokenize(ids).decode("utf-8", "replace")
        g = tok.decode(ids)
        if w != g:
            res["detok_bad"] += 1
            bad(detok_class(w, g, "detokenize"), {"text": text, "ids": ids, "want": w, "got": g})
        if g != text and not (tok.model == "llama" and "\u2581" in text):
            # ids equal to llama.cpp's that decode to the same text there too: the vocabulary can't
            # represent some bytes (byte-level BPE vocabularies without every byte symbol drop them)
            same = ids == ref.tokenize(text, False, False) and clean_spaces(g) == clean_spaces(w)
            res["roundtrip_bad"] += 0 if same else 1
            bad("roundtrip, lossy in llama.cpp too" if same else "roundtrip", {"text": text, "ids": ids, "got": g})
    return res


def _minilm_spec() -> dict:
    import tempfile
    import zipfile

    from embedkit.catalog import KNOWN_MODELS, _open_part

    with tempfile.TemporaryDirectory() as tmp:
        with _open_part(KNOWN_MODELS["all-minilm-l6-v2"].parts[0], Path(tmp)) as fh, zipfile.ZipFile(fh) as zf:
            name = next(n for n in zf.namelist() if n.endswith("tokenizer.json"))
            return json.loads(zf.read(name).decode("utf-8"))


def hf_bert(tok, spec: dict):  # noqa: ANN001, ANN201
    """HF `tokenizers` reference for an embedkit bert Tokenizer: MiniLM's tokenizer.json (BertNormalizer
    lowercase, BertPreTokenizer, WordPiece, [CLS]/[SEP] template) with this vocabulary put in."""
    from tokenizers import Tokenizer as HFTokenizer

    spec = json.loads(json.dumps(spec))
    vocab, types = {}, tok.vocab.types.tolist()
    for i, t in enumerate(tok.vocab.tokens):
        hf = t if types[i] != 1 else t[1:] if t.startswith("\u2581") else "##" + t
        vocab.setdefault(hf, i)
    spec["model"]["vocab"] = vocab
    for a in spec["added_tokens"]:
        a["id"] = vocab[a["content"]]
    for name, item in spec["post_processor"]["special_tokens"].items():
        item["ids"] = [vocab[name]]
    hf = HFTokenizer.from_str(json.dumps(spec))
    hf.no_padding()
    hf.no_truncation()
    return hf


def fuzz_hf(name: str, path: Path, texts: list[str], keep: int, spec: dict) -> dict:
    """ids vs HF tokenizers (which always matches its special added tokens: compared with parse_special on)."""
    with GGUFFile(path) as f:
        tok = load_tokenizer(f)
    hf = hf_bert(tok, spec)
    res: dict = {"vocab": f"{name} (vs HF tokenizers)", "strings": len(texts), "ids_compared": 0, "ids_bad": 0,
                 "examples": {}}
    for text in texts:
        for add_special in (True, False):
            want = hf.encode(text, add_special_tokens=add_special).ids
            got = tok.encode(text, add_special=add_special, parse_special=True)
            res["ids_compared"] += 1
            if got != want:
                res["ids_bad"] += 1
                ex = res["examples"].setdefault(f"ids add_special={add_special}", [])
                if len(ex) < keep:
                    ex.append({"text": text, "want": want, "got": got})
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--keep", type=int, default=50)
    ap.add_argument("--out", default="/tmp/tokenizer_fuzz.json")
    a = ap.parse_args()
    texts = random_texts(a.seed, a.n)
    results = []
    from embedkit.catalog import ensure_model

    spec = _minilm_spec()
    paths = vocab_paths()
    targets = [(n, p, False) for n, p in paths.items()]
    targets += [("minilm", Path(ensure_model("all-minilm-l6-v2")), True), ("bert-bge", paths["bert-bge"], True)]
    for name, path, vs_hf in targets:
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        res = fuzz_hf(name, path, texts, a.keep, spec) if vs_hf else fuzz_vocab(name, path, texts, a.keep)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        summary = {k: v for k, v in res.items() if k != "examples"}
        summary["classes"] = {k: len(v) for k, v in res.get("examples", {}).items()}
        print(json.dumps(summary, ensure_ascii=False), flush=True)
    Path(a.out).write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"llama-cpp-python {llama_cpp.__version__}, seed {a.seed}, {a.n} strings; details in {a.out}")


if __name__ == "__main__":
    main()
