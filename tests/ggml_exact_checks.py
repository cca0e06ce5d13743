"""Shared checks of the ggml_exact tests: golden case numbering and float32 bit equality."""

from __future__ import annotations

import numpy as np


def golden_cases(golden, prefix: str) -> list[int]:
    """Case numbers i of the keys `prefix/i/...` in a golden npz."""
    return sorted({int(k.split("/")[1]) for k in golden.files if k.startswith(prefix + "/")})


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """float32 arrays with identical bit patterns (tolerance zero), else how many outputs differ and by how much."""
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = got.view(np.uint32) != want.view(np.uint32)
    assert not diff.any(), f"{int(diff.sum())} of {diff.size} outputs differ, max abs {np.abs(got - want).max()}"
