"""Fused matvec and tiled batch matmul vs float64 numpy on the dequantized weights.

Tolerance: max |y - ref| / max |ref| < 1e-5 on every float32-activation path; for the decode kernels with
int16 activations (`cpu_matmul.INT8_MATVECS`, registry path cpu.int16) < 1e-4 (measured 1e-5 to 3e-5).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from test_kernels_dequant import random_blocks

from embedkit import kernels
from embedkit.errors import InputError
from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matmul as cpu_matmul
from embedkit.kernels.cpu import matvec_int8

TOL = 1e-5
TOL_INT16 = 1e-4


def _tolerance(t: GGMLType, n_tokens: int) -> float:
    integer = t in cpu_matmul.INT8_MATVECS and n_tokens <= cpu_matmul.matvec_tokens(t)
    return TOL_INT16 if integer else TOL


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", [t.name for t in kernels.supported_types()])
def test_matmul_matches_float64(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 1)
    n_rows, n_cols = 43, 768  # odd row count: exercises the leftover rows after groups of 4
    raw = random_blocks(rng, name, n_rows, n_cols)
    w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    for n_tokens in (1, 3, cpu_matmul.MAX_MATVEC_TOKENS + 1, 24):
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        y = kernels.matmul(x, raw, name, (n_rows, n_cols))
        assert y.shape == (n_tokens, n_rows) and y.dtype == np.float32
        err = _rel_err(y, x.astype(np.float64) @ w64.T)
        assert err < _tolerance(GGMLType[name], n_tokens), (name, n_tokens, err)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("name", [t.name for t in cpu_matmul.INT8_MATVECS])
def test_integer_activation_matvec_within_bound(name: str, parallel: bool, monkeypatch) -> None:
    if parallel:  # small weights run the serial row kernel; force the parallel one, over 2 chunks of rows
        monkeypatch.setattr(cpu_matmul, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 2)
    n_rows, n_cols = (matvec_int8.CHUNK_ROWS + 45 if parallel else 41), 1024
    raw = random_blocks(rng, name, n_rows, n_cols)
    w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    for n_tokens in (1, 2):
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        err = _rel_err(kernels.matmul(x, raw, name, (n_rows, n_cols)), x.astype(np.float64) @ w64.T)
        assert err < TOL_INT16, (name, n_tokens, err)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q6_K"])
def test_tiled_path_spans_several_tiles(name: str, monkeypatch) -> None:
    monkeypatch.setattr(cpu_matmul, "TILE_BYTES", 16 * 512 * 4)  # 16 rows a tile
    rng = np.random.default_rng(3)
    n_rows, n_cols = 70, 512
    raw = random_blocks(rng, name, n_rows, n_cols)
    w64 = kernels.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    x = rng.standard_normal((17, n_cols)).astype(np.float32)
    err = _rel_err(kernels.matmul(x, raw, name, (n_rows, n_cols)), x.astype(np.float64) @ w64.T)
    assert err < TOL


def test_matmul_1d_input_returns_1d() -> None:
    rng = np.random.default_rng(5)
    raw = random_blocks(rng, "Q4_0", 8, 64)
    x = rng.standard_normal(64).astype(np.float32)
    y = kernels.matmul(x, raw, "Q4_0", (8, 64))
    ref = kernels.dequantize(raw, "Q4_0", (8, 64)).astype(np.float64) @ x.astype(np.float64)
    assert y.shape == (8,)
    assert _rel_err(y, ref) < _tolerance(GGMLType.Q4_0, 1)


@pytest.mark.parametrize("name", ["F16", "BF16", "F32"])
def test_float_types_any_row_length(name: str) -> None:
    rng = np.random.default_rng(9)
    w = rng.standard_normal((13, 100)).astype(np.float32)
    raw = kernels.quantize(w, name)
    w64 = kernels.dequantize(raw, name, (13, 100)).astype(np.float64)
    for n_tokens in (1, 7):
        x = rng.standard_normal((n_tokens, 100)).astype(np.float32)
        assert _rel_err(kernels.matmul(x, raw, name, (13, 100)), x.astype(np.float64) @ w64.T) < TOL


def test_matmul_rejects_mismatched_shapes() -> None:
    raw = np.zeros(8 * 34, dtype=np.uint8)
    with pytest.raises(InputError, match="Q8_0"):
        kernels.matmul(np.ones((1, 64), np.float32), raw, "Q8_0", (8, 64))  # bytes for (8, 32) only
    with pytest.raises(InputError, match="does not match"):
        kernels.matmul(np.ones((1, 16), np.float32), raw, "Q8_0", (8, 32))


def test_set_num_threads_keeps_results() -> None:
    rng = np.random.default_rng(11)
    raw = random_blocks(rng, "Q4_K", 32, 512)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    before = kernels.get_num_threads()
    try:
        assert kernels.set_num_threads(1) == 1
        y1 = kernels.matmul(x, raw, "Q4_K", (32, 512))
        kernels.set_num_threads(None)
        y2 = kernels.matmul(x, raw, "Q4_K", (32, 512))
    finally:
        kernels.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)  # rows are independent: thread count never changes a value
    with pytest.raises(InputError):
        kernels.set_num_threads(0)


def test_embedkit_threads_env(monkeypatch) -> None:
    from embedkit.kernels.cpu import threads

    before = kernels.get_num_threads()
    try:
        monkeypatch.setenv("EMBEDKIT_THREADS", "1")
        assert kernels.set_num_threads(None) == 1
        monkeypatch.setenv("EMBEDKIT_THREADS", "two")
        with pytest.raises(InputError, match="EMBEDKIT_THREADS"):
            threads.set_num_threads(None)
    finally:
        kernels.set_num_threads(before)


def test_bound_spin_waits_keeps_a_setting_made_outside(monkeypatch) -> None:
    from embedkit.kernels.cpu import threads

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.bound_spin_waits(1234) and threads.os.environ["GOMP_SPINCOUNT"] == "1234"
    assert not threads.bound_spin_waits(99) and threads.os.environ["GOMP_SPINCOUNT"] == "1234"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert not threads.bound_spin_waits() and "GOMP_SPINCOUNT" not in threads.os.environ


def test_server_spin_count_is_lower_on_a_busy_machine() -> None:
    from embedkit.kernels.cpu import threads

    assert threads.server_spin_count(load=0.5, cores=2) == threads.SERVER_SPIN_COUNT
    assert threads.server_spin_count(load=3.9, cores=2) == threads.SERVER_SPIN_COUNT
    assert threads.server_spin_count(load=4.0, cores=2) == threads.BUSY_SPIN_COUNT
    assert threads.server_spin_count(cores=1) in (threads.SERVER_SPIN_COUNT, threads.BUSY_SPIN_COUNT)
