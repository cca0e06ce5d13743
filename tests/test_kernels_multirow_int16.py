"""The several-row int16 decode kernels (`kernels/cpu/multirow_int16`): every row bit-identical to the single-row
int16 kernel it mirrors (a sequence decodes the same in any batch), and close to float64 numpy.

Every type of the registry's cpu.int16 path, seeded random blocks, 2..8 activation rows (padded to 2, 4 or 8),
weight row counts that are not multiples of the kernels' chunks; through `matmul_rows` / `matmul_rows_many`
as the decode step calls them, with the parallel and the serial kernel.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from test_kernels_dequant import random_blocks

from embedkit import kernels
from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matmul as cpu_matmul
from embedkit.kernels.cpu import multirow_int16
from embedkit.kernels.cpu.matmul import INT8_MATVECS, INT16_ROWS, integer_activations
from embedkit.quant import types_with
from embedkit.quant.registry import CPU_INT16

NAMES = [t.name for t in types_with(CPU_INT16)]
TOL = 2e-4  # max |y - ref| / max |ref|: int16 activations (~1e-5 of |y| per row on random data)


def _solo(raw: np.ndarray, t: GGMLType, x: np.ndarray) -> np.ndarray:
    """Each row of x through the single-row int16 kernel."""
    y = np.empty((x.shape[0], raw.shape[0]), dtype=np.float32)
    for i in range(x.shape[0]):
        INT8_MATVECS[t][0](raw, *integer_activations(x[i]), y[i])
    return y


def test_every_packaged_type_has_the_kernel() -> None:
    # Gemma 3 / Qwen2.5 Q4_K_M files: Q4_K, Q6_K, Q5_0, Q8_0; SmolLM2: Q4_1
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q4_1"} <= set(NAMES)
    assert set(INT16_ROWS) == set(types_with(CPU_INT16))


@pytest.mark.parametrize("name", NAMES)
def test_rows_match_single_row_kernel_bits_and_float64(name: str) -> None:
    t = GGMLType[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 11)
    for n_rows, n_cols in ((37, 768), (5, 512)):
        raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
        w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
        for n_x in range(2, 9):
            x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
            solo = _solo(raw, t, x)
            for k in INT16_ROWS[t]:
                acts = multirow_int16.pair_layout(x)
                y = np.full((acts[2].shape[1], n_rows), np.nan, dtype=np.float32)
                k(raw, *acts, y)
                assert np.array_equal(y[:n_x], solo), (name, n_rows, n_cols, n_x)
                ref = x.astype(np.float64) @ w64.T
                err = float(np.abs(y[:n_x] - ref).max() / np.abs(ref).max())
                assert err < TOL, (name, n_x, err)


@pytest.mark.parametrize("name", ["Q5_0", "Q4_K", "Q6_K", "Q8_0", "Q4_1"])
def test_decode_dispatch_takes_it(name: str) -> None:
    t = GGMLType[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 12)
    n_rows, n_cols = 300, 512
    raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
    packed = cpu_matmul.decode_layout(raw, t, n_cols)
    for n_x in (2, 3, 8):
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        solo = _solo(raw, t, x)
        assert np.array_equal(cpu_matmul.matmul_rows(x, raw, t, n_cols, packed), solo), (name, n_x)
        many = cpu_matmul.matmul_rows_many(x, [(raw, t, packed), (raw, t, None)], n_cols)
        assert all(np.array_equal(y, solo) for y in many), (name, n_x)


def test_activation_quantizer_and_pair_layout_match_their_numpy_definitions() -> None:
    rng = np.random.default_rng(1907)
    n = 640
    x = (rng.standard_normal((5, n)) * rng.uniform(1e-3, 30.0, (5, n // 32)).repeat(32, axis=1)).astype(np.float32)
    x[1, 64:96] = 0.0  # an all-zero block: scale 0, quants 0
    x[2, 5] = 1e30  # a block whose other values round to 0
    blocks = x.reshape(5, n // 32, 32)
    amax = np.abs(blocks).max(axis=2)
    inv = np.where(amax > 0, np.float32(32767.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[:, :, None]), -32767, 32767).astype(np.int16)
    d = (amax / np.float32(32767.0)).astype(np.float32)
    s = (d * q.sum(axis=2, dtype=np.int64).astype(np.float32)).astype(np.float32)
    for i in range(5):
        xq, xd, xsum = integer_activations(x[i])
        assert np.array_equal(xq, q[i].reshape(-1)) and np.array_equal(xd, d[i]) and np.array_equal(xsum, s[i])
    xq, xd, xsum = multirow_int16.pair_layout(x)  # padded to 8 rows with copies of the last
    rows = np.concatenate([q.reshape(5, n), np.repeat(q[-1:].reshape(1, n), 3, axis=0)])
    pairs = rows.reshape(4, 2, n // 32, 2, 16).transpose(2, 0, 3, 1, 4).reshape(-1)
    assert np.array_equal(xq, pairs)
    d8 = np.concatenate([d, np.repeat(d[-1:], 3, axis=0)]).T  # [n // 32, 8]
    assert np.array_equal(xd, d8.reshape(n // 32, 4, 2, 1).repeat(8, axis=3).reshape(n // 32, 4, 16))
    assert np.array_equal(xsum, np.concatenate([s, np.repeat(s[-1:], 3, axis=0)]).T)
    # the kernel-threads version (wide rows) lays out the same values
    par = [np.full_like(a, 7) for a in (xq, xd, xsum)]
    multirow_int16.quantize_pairs_parallel(x, *par)
    assert all(np.array_equal(a, b) for a, b in zip(par, (xq, xd, xsum), strict=True))


def test_q5_0_rows_widened_to_q8_0_hold_the_same_values() -> None:
    rng = np.random.default_rng(5008)
    n_rows, n_cols = 33, 640
    raw = random_blocks(rng, "Q5_0", n_rows, n_cols).reshape(n_rows, -1)
    wide = multirow_int16.q5_0_as_q8_0(raw)
    assert wide.shape == (n_rows, n_cols // 32 * 34)
    q5 = kernels.dequantize(raw, "Q5_0", (n_rows, n_cols))
    q8 = kernels.dequantize(wide, "Q8_0", (n_rows, n_cols))
    assert np.array_equal(q5, q8)
    # a batched step runs Q5_0 weights through the copy: every row still bit-identical to its solo decode
    x = rng.standard_normal((8, n_cols)).astype(np.float32)
    assert cpu_matmul.WIDEN_Q5_0
    assert np.array_equal(cpu_matmul.matmul_rows(x, raw, GGMLType.Q5_0, n_cols), _solo(raw, GGMLType.Q5_0, x))


@pytest.mark.parametrize("name", NAMES)
def test_column_slices_carry_the_sums_bit_for_bit(name: str) -> None:
    # a slice budget of 1 byte: one block per slice, every partial sum carried through the state between slices
    t = GGMLType[name]
    suffix = name.lower()
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 13)
    n_rows, n_cols = multirow_int16.CHUNK_ROWS + 7, 1024
    raw = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
    for n_x in (2, 5, 8):
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        solo = _solo(raw, t, x)
        acts = multirow_int16.pair_layout(x)
        for k in (multirow_int16.int16_rows_kernel(suffix, 1), multirow_int16.int16_rows_serial(suffix, 3 * 8 * 256)):
            y = np.full((acts[2].shape[1], n_rows), np.nan, dtype=np.float32)
            k(raw, *acts, y)
            assert np.array_equal(y[:n_x], solo), (name, n_x)
