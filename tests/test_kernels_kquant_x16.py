"""Q4_K and Q6_K row dots on int16 activations (int8dot: scales unpacked in vector lanes) against the scalar
scale handling they replaced (`dot_row_q4_k_scalar_scales` / `dot_row_q6_k_scalar_scales`, the code that ran
before). Tolerance: none, the float32 bits must be equal, on fresh random blocks (random bytes, finite random
f16 scales) and random activations of several magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from test_kernels_dequant import random_blocks

from embedkit.kernels.cpu import int8dot, matvec_int8
from embedkit.kernels.cpu.matmul import integer_activations
from embedkit.kernels.cpu.matvec_legacy import FAST


@njit(fastmath=FAST)
def _reference_q4_k(w, xq, xd, xsum, y):
    for r in range(w.shape[0]):
        y[r] = int8dot.dot_row_q4_k_scalar_scales(w, r, xq, xd, xsum)


@njit(fastmath=FAST)
def _reference_q6_k(w, xq, xd, xsum, y):
    for r in range(w.shape[0]):
        y[r] = int8dot.dot_row_q6_k_scalar_scales(w, r, xq, xd)


CASES = {
    "Q4_K": (_reference_q4_k, matvec_int8.rows_q4_k_i8, matvec_int8.matvec_q4_k_i8),
    "Q6_K": (_reference_q6_k, matvec_int8.rows_q6_k_i8, matvec_int8.matvec_q6_k_i8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_vector_scales_bit_identical(name: str) -> None:
    reference, rows_kernel, parallel_kernel = CASES[name]
    rng = np.random.default_rng(70 + len(name) + ord(name[1]))
    n_rows, n_cols = matvec_int8.CHUNK_ROWS + 37, 1536
    w = random_blocks(rng, name, n_rows, n_cols).reshape(n_rows, -1)
    for scale in (0.01, 1.0, 30.0):
        x = (rng.standard_normal(n_cols) * scale).astype(np.float32)
        xq, xd, xsum = integer_activations(x)
        assert xq.dtype == np.int16
        ref = np.empty(n_rows, dtype=np.float32)
        reference(w, xq, xd, xsum, ref)
        serial = np.full(n_rows, np.nan, dtype=np.float32)
        rows_kernel(w, xq, xd, xsum, serial, 0, n_rows)
        parallel = np.full(n_rows, np.nan, dtype=np.float32)
        parallel_kernel(w, xq, xd, xsum, parallel)
        np.testing.assert_array_equal(serial.view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(parallel.view(np.uint32), ref.view(np.uint32))
