"""A small streaming GGUF v3 writer (metadata, tensor table, aligned tensor data).

Used by the converter and by the random-model builder; tensors are written one at a time so a
multi-GB model never has to sit in memory twice.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import GGUFError
from embedkit.gguf.constants import DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_DTYPES, ValueType
from embedkit.gguf.types import GGMLType, ggml_type, type_info

TensorSource = np.ndarray | Callable[[], np.ndarray]


@dataclass
class _PendingTensor:
    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # GGUF order
    n_bytes: int
    source: TensorSource


def _infer_value_type(value: Any) -> ValueType:
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, int):
        return ValueType.UINT32 if 0 <= value < 2**32 else ValueType.INT64
    if isinstance(value, float):
        return ValueType.FLOAT32
    if isinstance(value, str):
        return ValueType.STRING
    if isinstance(value, np.ndarray | Sequence):
        return ValueType.ARRAY
    raise GGUFError(f"cannot store a {type(value).__name__} in GGUF metadata")


def _array_item_type(items: Any) -> ValueType:
    if isinstance(items, np.ndarray):
        for vt, dt in SCALAR_DTYPES.items():
            if vt != ValueType.BOOL and dt == items.dtype.newbyteorder("<"):
                return vt
        if items.dtype == np.bool_:
            return ValueType.BOOL
        raise GGUFError(f"cannot store a numpy {items.dtype} array in GGUF metadata")
    if len(items) == 0:
        return ValueType.INT32
    first = items[0]
    if isinstance(first, bool):
        return ValueType.BOOL
    if isinstance(first, int):
        return ValueType.INT32
    if isinstance(first, float):
        return ValueType.FLOAT32
    if isinstance(first, str):
        return ValueType.STRING
    return ValueType.ARRAY


def _encode_value(value: Any, vtype: ValueType, item_type: ValueType | None = None) -> bytes:
    if vtype == ValueType.STRING:
        raw = value.encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ValueType.ARRAY:
        itype = item_type if item_type is not None else _array_item_type(value)
        head = struct.pack("<IQ", int(itype), len(value))
        if itype == ValueType.STRING:
            return head + b"".join(_encode_value(v, ValueType.STRING) for v in value)
        if itype == ValueType.ARRAY:
            return head + b"".join(_encode_value(v, ValueType.ARRAY) for v in value)
        return head + np.asarray(value, dtype=SCALAR_DTYPES[itype]).tobytes()
    return np.asarray(value, dtype=SCALAR_DTYPES[vtype]).tobytes()


class GGUFWriter:
    """Collect metadata and tensors, then `write(path)` a GGUF v3 file."""

    def __init__(self, architecture: str | None = None, alignment: int = DEFAULT_ALIGNMENT):
        self._kv: dict[str, bytes] = {}
        self._tensors: dict[str, _PendingTensor] = {}
        self.alignment = alignment
        if architecture is not None:
            self.add("general.architecture", architecture)
        if alignment != DEFAULT_ALIGNMENT:
            self.add("general.alignment", alignment, ValueType.UINT32)

    def add(
        self,
        key: str,
        value: Any,
        value_type: ValueType | None = None,
        item_type: ValueType | None = None,
    ) -> None:
        """Add one metadata pair; the type is inferred unless given (ints default to UINT32)."""
        vtype = value_type if value_type is not None else _infer_value_type(value)
        self._kv[key] = (
            _encode_value(key, ValueType.STRING)
            + struct.pack("<I", int(vtype))
            + _encode_value(value, vtype, item_type)
        )

    def add_tensor(
        self,
        name: str,
        data: TensorSource,
        ggml_type_: str | int | GGMLType = GGMLType.F32,
        np_shape: Sequence[int] | None = None,
    ) -> None:
        """Add a tensor. `data` is a float array (F32/F16/BF16 written as converted) or the raw
        bytes of a quantized tensor (uint8, with `np_shape` in elements), or a zero-argument
        callable returning either, called only while writing."""
        gt = ggml_type(ggml_type_)
        if np_shape is None:
            if callable(data):
                raise GGUFError(f"tensor {name!r}: a lazy tensor needs np_shape")
            np_shape = data.shape
        shape = tuple(int(d) for d in reversed(tuple(np_shape)))
        if not shape:
            shape = (1,)
        n_el = int(np.prod(shape))
        info = type_info(gt)
        n_bytes = info.row_bytes(shape[0]) * (n_el // shape[0])
        self._tensors[name] = _PendingTensor(name, gt, shape, n_bytes, data)

    @staticmethod
    def _tensor_bytes(t: _PendingTensor) -> np.ndarray:
        arr = t.source() if callable(t.source) else t.source
        arr = np.asarray(arr)
        if arr.dtype == np.uint8 and t.ggml_type not in (GGMLType.I8,):
            raw = arr
        elif t.ggml_type == GGMLType.F32:
            raw = arr.astype("<f4", copy=False)
        elif t.ggml_type == GGMLType.F16:
            raw = arr.astype("<f2", copy=False)
        elif t.ggml_type == GGMLType.BF16:
            bits = arr.astype("<f4").view("<u4")
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        elif t.ggml_type == GGMLType.I32:
            raw = arr.astype("<i4", copy=False)
        else:
            raise GGUFError(f"tensor {t.name!r}: give {t.ggml_type.name} data as raw uint8 bytes")
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        if raw.size != t.n_bytes:
            raise GGUFError(f"tensor {t.name!r}: {raw.size} bytes given, {t.n_bytes} expected")
        return raw

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the file (to a temporary name first, renamed when complete)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        header = GGUF_MAGIC + struct.pack("<IQQ", 3, len(self._tensors), len(self._kv))
        table = bytearray()
        offset = 0
        offsets = []
        for t in self._tensors.values():
            raw_name = t.name.encode("utf-8")
            table += struct.pack("<Q", len(raw_name)) + raw_name + struct.pack("<I", len(t.shape))
            table += struct.pack(f"<{len(t.shape)}Q", *t.shape)
            table += struct.pack("<IQ", int(t.ggml_type), offset)
            offsets.append(offset)
            offset += -(-t.n_bytes // self.alignment) * self.alignment
        with open(tmp, "wb") as fh:
            fh.write(header)
            for kv in self._kv.values():
                fh.write(kv)
            fh.write(table)
            fh.write(b"\0" * (-fh.tell() % self.alignment))
            data_start = fh.tell()
            for t, off in zip(self._tensors.values(), offsets, strict=True):
                fh.write(b"\0" * (data_start + off - fh.tell()))
                fh.write(self._tensor_bytes(t).data)
            fh.write(b"\0" * (-(fh.tell() - data_start) % self.alignment))
        os.replace(tmp, path)
        return path
