"""gguf-py's GGUFReader, the reference the reader and dequantization tests compare against, over the file's bytes
in memory instead of an np.memmap.

The parser is gguf-py's own, unchanged; only the buffer it slices differs. On a np.memmap every one of the ~1M
slices a large vocabulary takes runs memmap's Python-level `__getitem__` and `__array_finalize__`, which is most
of the reader's time (a 128k-token vocabulary: 13.4 s of CPU as a memmap, 5.5 s in memory, same fields)."""

from __future__ import annotations

from pathlib import Path

import gguf
import gguf.gguf_reader
import numpy as np
import pytest


class _NumpyReadingIntoMemory:
    """numpy as gguf.gguf_reader sees it while it opens a file, except that `memmap` reads the whole file."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def memmap(path, mode: str = "r") -> np.ndarray:
        return np.fromfile(path, dtype=np.uint8)


def gguf_py_reader(path: Path) -> gguf.GGUFReader:
    """gguf.GGUFReader(path) with its data read into memory (see the module docstring)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(gguf.gguf_reader, "np", _NumpyReadingIntoMemory())
        return gguf.GGUFReader(path)
