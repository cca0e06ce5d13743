"""Make the embedding reference vectors in this folder (dev machine only; see README.md).

Texts: paragraphs of real prose taken from the docstrings of Python standard-library modules
(Python Software Foundation License, permissive), filtered to 40..1200 characters and to at most
256 sentence-transformers tokens (the model's sentence-transformers max_seq_length), deduplicated,
sorted by module name and capped at 600.

Vectors: sentence-transformers with all-MiniLM-L6-v2 on CPU, the Transformer and mean-Pooling
modules only (the model's 2_Normalize module dropped), i.e. unnormalised mean-pooled vectors,
stored as float32.

Usage: python tests/data/embed/make_reference.py /path/to/all-MiniLM-L6-v2
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

import numpy as np

MODULES = [
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email", "enum", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
    "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "lzma", "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator",
    "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "profile", "queue", "random", "re", "reprlib", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
    "statistics", "string", "struct", "subprocess", "symtable", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom",
    "zipfile", "zipimport",
]
MAX_TEXTS = 600


def docstrings(module_name: str):
    """Yield the docstrings of a module, its classes, functions and methods, in source order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module_name)
    except Exception:
        return
    seen = set()
    stack = [mod]
    while stack:
        obj = stack.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        doc = inspect.getdoc(obj)
        if doc:
            yield doc
        for name, member in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
            if name.startswith("_"):
                continue
            if getattr(member, "__module__", None) != module_name:
                continue
            if inspect.isclass(member) or inspect.isfunction(member):
                stack.append(member)


def paragraphs(doc: str):
    """Split a docstring into prose paragraphs (skip code examples and tables)."""
    for para in doc.split("\n\n"):
        lines = [ln.strip() for ln in para.splitlines()]
        if any(ln.startswith((">>>", "...", "$", "|", "+--", "--", "==")) for ln in lines):
            continue
        text = " ".join(ln for ln in lines if ln)
        if 40 <= len(text) <= 1200 and sum(c.isalpha() for c in text) > 0.6 * len(text):
            yield text


def main(model_dir: str) -> None:
    from sentence_transformers import SentenceTransformer

    here = Path(__file__).resolve().parent
    full = SentenceTransformer(model_dir, device="cpu")
    model = SentenceTransformer(modules=[full[0], full[1]], device="cpu")  # no 2_Normalize
    tok = full.tokenizer
    texts, seen = [], set()
    for module_name in MODULES:
        for doc in docstrings(module_name):
            for text in paragraphs(doc):
                if text in seen:
                    continue
                if len(tok(text)["input_ids"]) > 256:
                    continue
                seen.add(text)
                texts.append(text)
    texts = texts[:MAX_TEXTS]
    vecs = model.encode(texts, batch_size=32, normalize_embeddings=False, convert_to_numpy=True)
    np.save(here / "minilm_reference.npy", vecs.astype(np.float32))
    n_tokens = [len(tok(t)["input_ids"]) for t in texts]
    (here / "texts.json").write_text(json.dumps(texts, indent=0, ensure_ascii=False) + "\n")
    print(f"{len(texts)} texts, tokens min/median/max {min(n_tokens)}/{int(np.median(n_tokens))}/{max(n_tokens)}, "
          f"vectors {vecs.shape} -> {here}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/models/all-MiniLM-L6-v2")
