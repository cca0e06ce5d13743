"""The small-batch matmul (`kernels/cpu/matmul_multirow`, registry path cpu.multirow) vs float64 numpy.

Every type with a row decoder, seeded random blocks, 1..16 activation rows, weight row counts that are not
multiples of the 4-row tile; the row decoders alone must give `dequant_*`'s float32 weights.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from test_kernels_dequant import random_blocks

from embedkit import kernels
from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matmul as cpu_matmul
from embedkit.kernels.cpu.dispatch import DEQUANTIZERS, MULTIROW_DECODERS, MULTIROW_KERNELS
from embedkit.quant import types_with
from embedkit.quant.registry import CPU_MULTIROW

TOL = 1e-5  # max |y - ref| / max |ref| (float32 accumulation; measured ~3e-7)
NAMES = [t.name for t in types_with(CPU_MULTIROW)]


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_registry_declares_the_packaged_models_types() -> None:
    # Gemma 3 / Qwen2.5 Q4_K_M files: Q4_K, Q6_K, Q5_0, Q8_0; SmolLM2: Q4_1
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q4_1"} <= set(NAMES)
    assert set(MULTIROW_DECODERS) == set(MULTIROW_KERNELS) == set(types_with(CPU_MULTIROW))


@pytest.mark.parametrize("name", NAMES)
def test_multirow_matches_float64(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 7)
    for n_rows, n_cols in ((43, 768), (6, 512), (1, 256)):
        raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
        w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
        for n_x in range(1, 17):
            x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
            y = np.full((n_x, n_rows), np.nan, dtype=np.float32)
            MULTIROW_KERNELS[GGMLType[name]](raw, x, y)
            err = _rel_err(y, x.astype(np.float64) @ w64.T)
            assert err < TOL, (name, n_rows, n_cols, n_x, err)


@pytest.mark.parametrize("name", NAMES)
def test_row_decoder_gives_the_dequantized_weights(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 8)
    n_rows, n_cols = 5, 1024
    t = GGMLType[name]
    raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
    ref = np.empty((n_rows, n_cols), dtype=np.float32)
    DEQUANTIZERS[t](raw, ref)
    # x = identity rows picks single weights: y[i, r] = W[r, i] (a 16-row slice of the identity at a time)
    for c0 in range(0, n_cols, 16):
        x = np.zeros((16, n_cols), dtype=np.float32)
        x[np.arange(16), c0 + np.arange(16)] = 1.0
        y = np.empty((16, n_rows), dtype=np.float32)
        MULTIROW_KERNELS[t](raw, x, y)
        np.testing.assert_allclose(y.T, ref[:, c0 : c0 + 16], rtol=2e-7, atol=0, err_msg=name)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_0"])
def test_matmul_rows_takes_it_for_small_batches(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 9)
    n_rows, n_cols = 37, 512
    raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
    w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    top = cpu_matmul.MAX_MULTIROW_TOKENS
    for n_x in (cpu_matmul.multirow_from(GGMLType[name]), top, top + 1):
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        y = cpu_matmul.matmul_rows(x, raw, GGMLType[name], n_cols)
        assert _rel_err(y, x.astype(np.float64) @ w64.T) < TOL
