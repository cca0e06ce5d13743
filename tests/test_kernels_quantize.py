"""Quantizers: legacy types byte-identical to gguf-py; Q4_K / Q6_K byte-identical to llama.cpp's
reference quantizer (goldens in tests/data/kernels, see the README there) and round-trip RMSE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from embedkit import kernels
from embedkit.errors import UnsupportedQuantError

GOLDENS = Path(__file__).parent / "data" / "kernels" / "kquant_goldens.npz"


def _rows(rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    x = rng.standard_normal((n_rows, n_cols)) * rng.uniform(0.001, 20.0, (n_rows, 1))
    x = x.astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, 40:72] = 1.5  # a constant block
    x[2, :64] = rng.integers(-4, 5, 64)  # exact ties at .5 after scaling
    return x


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16"])
def test_legacy_quantize_matches_gguf_py(name: str) -> None:
    rng = np.random.default_rng(8001)
    x = _rows(rng, 24, 512)
    ref = np.asarray(quants.quantize(x, GGMLQuantizationType[name])).view(np.uint8).reshape(24, -1)
    out = kernels.quantize(x, name)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_kquant_quantize_matches_llama_cpp_reference(name: str) -> None:
    golden = np.load(GOLDENS)
    x = golden["x"]
    out = kernels.quantize(x, name)
    np.testing.assert_array_equal(out, golden[name.lower()])


@pytest.mark.parametrize(("name", "max_rel_rmse"), [("Q4_K", 0.09), ("Q6_K", 0.022)])
def test_kquant_round_trip_rmse(name: str, max_rel_rmse: float) -> None:
    """Round-trip RMSE / std on seeded normal data (llama.cpp's reference gives ~0.072 for Q4_K, ~0.018 for Q6_K)."""
    rng = np.random.default_rng(8002)
    x = (rng.standard_normal((32, 1024)) * 0.05).astype(np.float32)
    back = kernels.dequantize(kernels.quantize(x, name), name, x.shape)
    rel_rmse = np.sqrt(np.mean((back.astype(np.float64) - x) ** 2)) / x.std()
    assert rel_rmse < max_rel_rmse


def test_quantize_without_kernel_raises() -> None:
    with pytest.raises(UnsupportedQuantError, match="Q3_K"):
        kernels.quantize(np.ones((1, 256), np.float32), "Q3_K")
