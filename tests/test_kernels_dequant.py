"""Dequantization kernels vs gguf-py's `gguf.quants.dequantize`: bit for bit (float32 bit patterns)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants
from gguf_reference import gguf_py_reader

from embedkit import kernels
from embedkit.errors import UnsupportedQuantError
from embedkit.gguf.types import GGMLType, type_info
from embedkit.quant import QUANT_TYPES


def random_blocks(rng: np.random.Generator, name: str, n_rows: int, n_cols: int) -> np.ndarray:
    """Random bytes for an (n_rows, n_cols) tensor of type `name`, with finite random f16 scales."""
    info = type_info(name)
    if name in ("F32", "F16", "BF16"):
        x = (rng.standard_normal((n_rows, n_cols)) * 3).astype(np.float32)
        return kernels.quantize(x, name).reshape(-1)
    blocks = rng.integers(0, 256, (n_rows * n_cols // info.block_size, info.type_size), dtype=np.uint8)
    for o in QUANT_TYPES[GGMLType[name]].f16_scales:  # finite scales at the block's float16 scale fields
        scales = (rng.standard_normal(len(blocks)) * 0.02).astype(np.float16)
        blocks[:, o : o + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


@pytest.mark.parametrize("name", [t.name for t in kernels.supported_types()])
def test_dequantize_random_blocks_bit_exact(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    info = type_info(name)
    n_rows, n_cols = 9, max(256, info.block_size) * 3
    raw = random_blocks(rng, name, n_rows, n_cols)
    ref = quants.dequantize(raw.reshape(n_rows, -1), GGMLQuantizationType[name]).astype(np.float32)
    out = kernels.dequantize(raw, name, (n_rows, n_cols))
    assert out.shape == (n_rows, n_cols) and out.dtype == np.float32
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(out.view(np.uint32), ref.reshape(n_rows, n_cols).view(np.uint32))


def test_dequantize_accepts_enum_and_id() -> None:
    rng = np.random.default_rng(7)
    raw = random_blocks(rng, "Q4_K", 2, 256)
    a = kernels.dequantize(raw, "q4_k", (2, 256))
    b = kernels.dequantize(raw, GGMLType.Q4_K, (2, 256))
    c = kernels.dequantize(raw, int(GGMLType.Q4_K), (2, 256))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name", ["IQ2_XXS", "TQ1_0", "MXFP4", "Q8_K"])
def test_type_without_kernel_raises_naming_it(name: str) -> None:
    info = type_info(name)
    raw = np.zeros(info.type_size, dtype=np.uint8)
    with pytest.raises(UnsupportedQuantError, match=name):
        kernels.dequantize(raw, name, (1, info.block_size))
    with pytest.raises(UnsupportedQuantError, match=name):
        kernels.matmul(np.ones((1, info.block_size), np.float32), raw, name, (1, info.block_size))


@pytest.mark.slow
def test_dequantize_every_gemma_tensor_bit_exact(gemma_path) -> None:
    """Every tensor of the real model; tensors over 1M elements are checked on 3 slices of 128 rows."""
    reader = gguf_py_reader(gemma_path)
    seen = set()
    for t in reader.tensors:
        n_cols = int(t.shape[0])
        n_rows = int(np.prod(t.shape[1:]))
        name = t.tensor_type.name
        seen.add(name)
        rows = np.asarray(t.data).view(np.uint8).reshape(n_rows, -1)
        if n_rows * n_cols > 1_000_000:
            mid = n_rows // 2
            rows = np.concatenate([rows[:128], rows[mid : mid + 128], rows[-128:]])
        ref = quants.dequantize(rows, t.tensor_type).astype(np.float32)
        out = kernels.dequantize(rows, name, (rows.shape[0], n_cols))
        assert np.array_equal(out.view(np.uint32), ref.reshape(out.shape).view(np.uint32)), t.name
    assert {"Q8_0", "Q4_K", "Q6_K", "F32"} <= seen
