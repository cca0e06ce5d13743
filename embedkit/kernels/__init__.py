"""The engine's arithmetic on GGUF tensor bytes: dequantize, quantize and `x @ W.T` with W quantized.

Public entry points (everything else in `embedkit.kernels.cpu` is an implementation detail):

- `dequantize(data, ggml_type, shape)` -> float32 [n_rows, n_cols]
- `matmul(x, data, ggml_type, shape)` -> float32 [n_tokens, n_rows] (= x @ W.T, W never fully dequantized)
- `quantize(x, ggml_type)` -> uint8 [n_rows, row_bytes]
- `set_num_threads(n)` / `get_num_threads()` (default: EMBEDKIT_THREADS, else all cores)
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import InputError, UnsupportedQuantError
from embedkit.gguf.types import GGMLType, ggml_type, type_info
from embedkit.kernels.cpu.dispatch import DEQUANTIZERS, QUANTIZERS
from embedkit.kernels.cpu.matmul import matmul_rows
from embedkit.kernels.cpu.threads import apply_num_threads, get_num_threads, set_num_threads

__all__ = [
    "dequantize",
    "matmul",
    "quantize",
    "set_num_threads",
    "get_num_threads",
    "apply_num_threads",
    "supported_types",
]


def supported_types() -> list[GGMLType]:
    """ggml types that `dequantize` and `matmul` accept."""
    return list(DEQUANTIZERS)


_RESOLVED: dict[object, GGMLType] = {}  # type argument -> GGMLType, so the decode loop skips the parsing


def _resolve(t: str | int | GGMLType) -> GGMLType:
    hit = _RESOLVED.get(t)
    if hit is not None:
        return hit
    try:
        resolved = ggml_type(t)
    except Exception:
        raise UnsupportedQuantError(f"unknown ggml type {t!r}") from None
    _RESOLVED[t] = resolved
    return resolved


_U8 = np.dtype(np.uint8)
_ROW_BYTES: dict[tuple[GGMLType, int], int] = {}  # (type, n_cols) -> bytes per row, checked once


def _rows(data: np.ndarray, t: GGMLType, shape: tuple[int, int]) -> np.ndarray:
    """The raw bytes as a C-contiguous uint8 [n_rows, row_bytes] view, checked against `shape`."""
    if len(shape) != 2:
        raise InputError(f"shape {tuple(shape)}: expected (n_rows, n_cols)")
    n_rows, n_cols = shape
    row_bytes = _ROW_BYTES.get((t, n_cols))
    if row_bytes is None:
        n_cols = int(n_cols)
        info = type_info(t)
        if n_cols % info.block_size:
            raise InputError(f"{t.name}: row length {n_cols} is not a multiple of the block size {info.block_size}")
        row_bytes = _ROW_BYTES[(t, n_cols)] = n_cols // info.block_size * info.type_size
    n_rows = int(n_rows)
    if type(data) is np.ndarray and data.dtype is _U8 and data.shape == (n_rows, row_bytes) and data.flags.c_contiguous:
        return data  # already rows of bytes (e.g. TensorInfo.rows_view())
    raw = np.asarray(data)
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    if raw.size != n_rows * row_bytes:
        raise InputError(
            f"{t.name} tensor of shape ({n_rows}, {n_cols}) needs {n_rows * row_bytes} bytes, got {raw.size}"
        )
    return np.ascontiguousarray(raw.reshape(n_rows, row_bytes))


def _dequantizer(t: GGMLType):
    kernel = DEQUANTIZERS.get(t)
    if kernel is None:
        raise UnsupportedQuantError(f"no kernel for ggml type {t.name}")
    return kernel


def dequantize(data: np.ndarray, ggml_type: str | int | GGMLType, shape: tuple[int, int]) -> np.ndarray:
    """Dequantize raw GGUF tensor bytes (rows of blocks) to float32 [n_rows, n_cols].

    Bit-identical to `gguf.quants.dequantize` for every supported type.
    """
    t = _resolve(ggml_type)
    kernel = _dequantizer(t)
    rows = _rows(data, t, shape)
    out = np.empty((rows.shape[0], int(shape[1])), dtype=np.float32)
    apply_num_threads()
    kernel(rows, out)
    return out


def matmul(x: np.ndarray, data: np.ndarray, ggml_type: str | int | GGMLType, shape: tuple[int, int]) -> np.ndarray:
    """`x @ W.T` for float32 x [n_tokens, n_cols] and W given as raw GGUF bytes of `shape` (n_rows, n_cols).

    Returns float32 [n_tokens, n_rows]. Types on the registry's `cpu.int16` path (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
    Q4_K, Q6_K) run one token through the fused decode matvec and 2 to 8 through `cpu/multirow_int16` (each row's
    result bit-identical to its one-token matvec), quantizing x to int16 blocks (~3e-5 of max|y|); up to 64 tokens
    run the small-batch kernel (`cpu/matmul_multirow`, float32 activations, relative error ~1e-6) where the type
    has one, more run dequantized tiles through BLAS. llama.cpp's own arithmetic: `embedkit.kernels.cpu.ggml_exact`.
    """
    t = _resolve(ggml_type)
    _dequantizer(t)
    rows = _rows(data, t, shape)
    x = np.ascontiguousarray(x, dtype=np.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != int(shape[1]):
        raise InputError(f"matmul: x of shape {x.shape} does not match weight shape {tuple(shape)}")
    apply_num_threads()
    y = matmul_rows(x, rows, t, int(shape[1]))
    return y[0] if squeeze else y


def quantize(x: np.ndarray, ggml_type: str | int | GGMLType) -> np.ndarray:
    """Quantize float32 rows [n_rows, n_cols] to raw GGUF bytes uint8 [n_rows, row_bytes].

    Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are byte-identical to `gguf.quants.quantize`; F32, F16 and BF16
    are plain conversions (BF16 rounds to nearest even, as ggml).
    """
    t = _resolve(ggml_type)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"quantize: expected a 2-D float32 array, got shape {x.shape}")
    x = np.ascontiguousarray(x)
    n_rows, n_cols = x.shape
    if t == GGMLType.F32:
        return x.view(np.uint8).reshape(n_rows, 4 * n_cols).copy()
    if t == GGMLType.F16:
        return x.astype(np.float16).view(np.uint8).reshape(n_rows, 2 * n_cols)
    if t == GGMLType.BF16:
        return _to_bf16(x).view(np.uint8).reshape(n_rows, 2 * n_cols)
    kernel = QUANTIZERS.get(t)
    if kernel is None:
        raise UnsupportedQuantError(f"no quantizer for ggml type {t.name}")
    info = type_info(t)
    if n_cols % info.block_size:
        raise InputError(f"{t.name}: row length {n_cols} is not a multiple of the block size {info.block_size}")
    out = np.empty((n_rows, info.row_bytes(n_cols)), dtype=np.uint8)
    apply_num_threads()
    kernel(x, out)
    return out


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16)."""
    n = x.view(np.uint32).astype(np.uint64)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    quiet = ((n & 0xFFFF0000) | (64 << 16)) >> 16
    return np.where(nan, quiet, rounded).astype(np.uint16)
