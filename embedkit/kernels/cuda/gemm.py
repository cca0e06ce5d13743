"""Batched matmul through cuBLAS (CuPy): Y[n, rows] = X[n, k] @ W[rows, k]^T with float16 inputs,
float32 accumulation and float32 output (cublasGemmEx). Arrays are numba device arrays, shared
with CuPy through __cuda_array_interface__ (no copies).

CuPy's cuBLAS wrappers point the handle at CuPy's *current* stream before every call, so a
`cublas.setStream` of ours alone would be overridden: each call runs with the caller's stream made
current (`_on_stream`).
"""

from __future__ import annotations

import numpy as np

_CUDA_R_32F = 0
_CUDA_R_16F = 2
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99
_OP_N, _OP_T = 0, 1

_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)


def _on_stream(stream_ptr: int):
    """A context in which CuPy's current stream is the stream at `stream_ptr` (0: the legacy default)."""
    import cupy

    return cupy.cuda.ExternalStream(stream_ptr) if stream_ptr else cupy.cuda.Stream.null


def gemm_f16(x16, w16, y32, stream_ptr: int = 0) -> None:
    """y32 float32 [n, rows] = x16 float16 [n, k] @ w16 float16 [rows, k]^T (all device, C order)."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    n, k = x16.shape
    rows = w16.shape[0]
    handle = cupy.cuda.device.get_cublas_handle()
    with _on_stream(stream_ptr):
        _gemm_ex_f16(cublas, handle, rows, n, k, w16, x16, y32)


def _gemm_ex_f16(cublas, handle, rows: int, n: int, k: int, w16, x16, y32) -> None:
    # column-major view: Y^T (rows x n) = W (k x rows)^T . X^T (k x n)
    cublas.gemmEx(
        handle,
        _OP_T,
        _OP_N,
        rows,
        n,
        k,
        _ONE.ctypes.data,
        w16.__cuda_array_interface__["data"][0],
        _CUDA_R_16F,
        k,
        x16.__cuda_array_interface__["data"][0],
        _CUDA_R_16F,
        k,
        _ZERO.ctypes.data,
        y32.__cuda_array_interface__["data"][0],
        _CUDA_R_32F,
        rows,
        _CUBLAS_COMPUTE_32F,
        _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
    )


def gemm_f32_strided_batched(
    transa: int, transb: int, m: int, n: int, k: int, a, lda: int, stride_a: int, b, ldb: int, stride_b: int,
    c, ldc: int, stride_c: int, batch: int, stream_ptr: int = 0,
) -> None:  # fmt: skip
    """Column-major C_i = op(A_i) op(B_i) in float32 (cublasSgemmStridedBatched, no TF32); a, b, c
    are device addresses (ints), strides in elements, transa/transb 0 = N, 1 = T."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    with _on_stream(stream_ptr):
        cublas.sgemmStridedBatched(
            handle, transa, transb, m, n, k, _ONE.ctypes.data, a, lda, stride_a, b, ldb, stride_b,
            _ZERO.ctypes.data, c, ldc, stride_c, batch,
        )  # fmt: skip
