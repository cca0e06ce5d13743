"""Q4_1 repacked for decode (kernels/cpu/q4_1_packed.py): the layout round-trips bit for bit, and the packed
matvec gives bit-identical float32 results to the GGUF-layout kernel (`matvec_int8.rows_q4_1_i8`) on int16
activations. Tolerance: none (exact equality of the float32 bits), on fresh random blocks (random nibbles,
random finite f16 d and m)."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels_dequant import random_blocks

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matmul as cpu_matmul
from embedkit.kernels.cpu import matvec_int8, q4_1_packed


def _q4_1(rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    return random_blocks(rng, "Q4_1", n_rows, n_cols).reshape(n_rows, -1)


@pytest.mark.parametrize("n_rows", [1, 6, 33])
def test_pack_round_trip_bit_exact(n_rows: int) -> None:
    rng = np.random.default_rng(80 + n_rows)
    raw = _q4_1(rng, n_rows, 576)
    packed = q4_1_packed.pack_q4_1(raw)
    assert packed.shape == ((n_rows + 3) // 4, 4 * raw.shape[1])
    np.testing.assert_array_equal(q4_1_packed.unpack_q4_1(packed, n_rows), raw)


@pytest.mark.parametrize("n_rows,n_cols", [(3, 64), (130, 576), (2 * q4_1_packed.CHUNK_ROWS + 5, 1536)])
def test_packed_matvec_bit_identical_to_gguf_layout(n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng(n_rows * 11 + n_cols)
    raw = _q4_1(rng, n_rows, n_cols)
    packed = q4_1_packed.pack_q4_1(raw)
    for _ in range(3):
        x = (rng.standard_normal(n_cols) * rng.uniform(0.1, 10.0)).astype(np.float32)
        xq, xd, xsum = cpu_matmul.integer_activations(x)
        assert xq.dtype == np.int16
        ref = np.empty(n_rows, dtype=np.float32)
        matvec_int8.rows_q4_1_i8(raw, xq, xd, xsum, ref, 0, n_rows)
        serial = np.full(n_rows, np.nan, dtype=np.float32)
        q4_1_packed.rows_q4_1_packed(packed, xq, xd, xsum, serial, 0, n_rows)
        parallel = np.full(n_rows, np.nan, dtype=np.float32)
        q4_1_packed.matvec_q4_1_packed(packed, xq, xd, xsum, parallel)
        np.testing.assert_array_equal(serial.view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(parallel.view(np.uint32), ref.view(np.uint32))


def test_decode_layout_needs_whole_groups() -> None:
    rng = np.random.default_rng(90)
    assert cpu_matmul.decode_layout(_q4_1(rng, 4, 64), GGMLType.Q4_1, 64) is not None
    assert cpu_matmul.decode_layout(_q4_1(rng, 4, 96), GGMLType.Q4_1, 96) is None  # 3 blocks: not whole pairs
