"""Float tensor types (F32, F16, BF16) to float32, row-parallel.

Kernel signature shared by every dequantizer: `(data uint8 [n_rows, row_bytes], out float32 [n_rows, n_cols])`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.halfbits import bits_to_f32, f16_to_f32


@njit(parallel=True, cache=True)
def dequant_f32(data, out):
    """Copy raw little-endian float32 rows."""
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for i in range(out.shape[1]):
            o = 4 * i
            dst[i] = bits_to_f32(
                np.uint32(row[o])
                | (np.uint32(row[o + 1]) << 8)
                | (np.uint32(row[o + 2]) << 16)
                | (np.uint32(row[o + 3]) << 24)
            )


@njit(parallel=True, cache=True)
def dequant_f16(data, out):
    """IEEE half rows to float32 (exact)."""
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for i in range(out.shape[1]):
            dst[i] = f16_to_f32(np.int32(row[2 * i]) | (np.int32(row[2 * i + 1]) << 8))


@njit(parallel=True, cache=True)
def dequant_bf16(data, out):
    """bfloat16 rows to float32 (exact: the 16 bits become the high half of a float32)."""
    for r in prange(data.shape[0]):
        row = data[r]
        dst = out[r]
        for i in range(out.shape[1]):
            dst[i] = bits_to_f32((np.uint32(row[2 * i]) << 16) | (np.uint32(row[2 * i + 1]) << 24))
