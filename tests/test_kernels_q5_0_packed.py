"""Q5_0 repacked for decode (kernels/cpu/q5_0_packed.py): the layout round-trips bit for bit, and the packed
matvec gives bit-identical float32 results to the GGUF-layout kernel (`matvec_int8.rows_q5_0_i8`) on int16
activations. Tolerance: none (exact equality of the float32 bits), on fresh random blocks (every bit pattern
of qs/qh, random finite f16 scales)."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels_dequant import random_blocks

from embedkit import kernels
from embedkit.backend.cpu import CPUBackend, CPUWeight
from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import matmul as cpu_matmul
from embedkit.kernels.cpu import matvec_int8, q5_0_packed


def _q5_0(rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    return random_blocks(rng, "Q5_0", n_rows, n_cols).reshape(n_rows, -1)


@pytest.mark.parametrize("n_rows", [1, 7, 64])
def test_pack_round_trip_bit_exact(n_rows: int) -> None:
    rng = np.random.default_rng(50 + n_rows)
    raw = _q5_0(rng, n_rows, 384)
    packed = q5_0_packed.pack_q5_0(raw)
    assert packed.shape == ((n_rows + 3) // 4, 4 * raw.shape[1])  # same bytes per row (+ zero rows to a quad)
    np.testing.assert_array_equal(q5_0_packed.unpack_q5_0(packed, n_rows), raw)


@pytest.mark.parametrize("n_rows,n_cols", [(5, 128), (133, 896), (2 * q5_0_packed.CHUNK_ROWS + 9, 640)])
def test_packed_matvec_bit_identical_to_gguf_layout(n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng(n_rows * 7 + n_cols)
    raw = _q5_0(rng, n_rows, n_cols)
    packed = q5_0_packed.pack_q5_0(raw)
    for _ in range(3):
        x = (rng.standard_normal(n_cols) * rng.uniform(0.1, 10.0)).astype(np.float32)
        xq, xd, xsum = cpu_matmul.integer_activations(x)
        assert xq.dtype == np.int16
        ref = np.empty(n_rows, dtype=np.float32)
        matvec_int8.rows_q5_0_i8(raw, xq, xd, xsum, ref, 0, n_rows)
        serial = np.full(n_rows, np.nan, dtype=np.float32)
        q5_0_packed.rows_q5_0_packed(packed, xq, xd, xsum, serial, 0, n_rows)
        parallel = np.full(n_rows, np.nan, dtype=np.float32)
        q5_0_packed.matvec_q5_0_packed(packed, xq, xd, xsum, parallel)
        np.testing.assert_array_equal(serial.view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(parallel.view(np.uint32), ref.view(np.uint32))


def test_decode_layout_only_where_it_applies() -> None:
    rng = np.random.default_rng(61)
    assert cpu_matmul.decode_layout(_q5_0(rng, 4, 128), GGMLType.Q5_0, 128) is not None
    assert cpu_matmul.decode_layout(_q5_0(rng, 4, 96), GGMLType.Q5_0, 96) is None  # not whole groups of 4 blocks
    q8 = random_blocks(rng, "Q8_0", 4, 128).reshape(4, -1)
    assert cpu_matmul.decode_layout(q8, GGMLType.Q8_0, 128) is None


class _Tensor:
    """The TensorInfo fields CPUBackend.weight reads."""

    def __init__(self, name: str, raw: np.ndarray, shape: tuple[int, int]) -> None:
        self.name, self.ggml_type, self.np_shape, self.data = name, GGMLType.Q5_0, shape, raw.reshape(-1)

    def rows_view(self) -> np.ndarray:
        return self.data.reshape(self.np_shape[0], -1)


def test_backend_decode_uses_packed_rows_with_same_results() -> None:
    rng = np.random.default_rng(78)
    n_rows, n_cols = 300, 256
    raw = _q5_0(rng, n_rows, n_cols)
    be = CPUBackend()
    w = be.weight(_Tensor("w", raw, (n_rows, n_cols)))
    w2 = be.weight(_Tensor("w2", raw[:100].copy(), (100, n_cols)))
    assert isinstance(w, CPUWeight) and w.packed is False  # packed on first decode use, not at load
    x = rng.standard_normal((2, n_cols)).astype(np.float32)
    y = be.matmul(x, w)
    y_many = be.matmuls(x, [w, w2])
    assert isinstance(w.packed, np.ndarray)
    ref = kernels.matmul(x, raw, "Q5_0", (n_rows, n_cols))  # the GGUF-layout kernels
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y_many[0], ref)
    np.testing.assert_array_equal(y_many[1], ref[:, :100])
