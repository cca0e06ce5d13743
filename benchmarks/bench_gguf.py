"""Opening a GGUF file and reading all its metadata: embedkit's mmap reader vs gguf-py's GGUFReader.

Run: python benchmarks/bench_gguf.py [MODEL.gguf]   (default: the packaged Gemma 3 270M, 262,144 tokens)
"""

from __future__ import annotations

import platform
import sys
import time

from embedkit.catalog import resolve_model
from embedkit.gguf import GGUFFile, StringArray


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def embedkit_open(path) -> None:
    with GGUFFile(path) as f:
        for value in f.metadata.values():
            if isinstance(value, StringArray):
                len(value)


def embedkit_open_decode(path) -> None:
    with GGUFFile(path) as f:
        for value in f.metadata.values():
            if isinstance(value, StringArray):
                value.tolist()


def gguf_py_open(path) -> None:
    import gguf

    reader = gguf.GGUFReader(path)
    for field in reader.fields.values():
        field.contents()


def main() -> None:
    path = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "gemma3-270m")
    print(f"model: {path.name}   machine: {platform.machine()}, python {platform.python_version()}")
    rows = [
        ("embedkit GGUFFile (metadata parsed, strings lazy)", best_of(lambda: embedkit_open(path), 10)),
        ("embedkit GGUFFile + decode every string", best_of(lambda: embedkit_open_decode(path), 5)),
    ]
    try:
        rows.append(("gguf-py GGUFReader + field.contents()", best_of(lambda: gguf_py_open(path), 1)))
    except ImportError:
        rows.append(("gguf-py GGUFReader (not installed)", float("nan")))
    print(f"{'reader':<52} {'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<52} {seconds:>10.4f}")


if __name__ == "__main__":
    main()
