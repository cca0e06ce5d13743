"""A small safetensors reader: an 8-byte header length, a JSON header, then raw little-endian bytes."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import ConversionError

# safetensors dtype name -> numpy dtype of the stored bytes (BF16 is read as raw uint16, see to_float32).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}


@dataclass(frozen=True)
class SafeTensor:
    """One tensor of a safetensors file: its name, stored dtype, shape and a zero-copy view of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    raw: np.ndarray  # stored values, numpy dtype from _DTYPES, already reshaped

    def to_float32(self) -> np.ndarray:
        """The values as a float32 array (BF16 widened bit-exactly)."""
        if self.dtype == "BF16":
            return (self.raw.astype(np.uint32) << 16).view(np.float32)
        return self.raw.astype(np.float32)


def read_safetensors(path: str | Path) -> dict[str, SafeTensor]:
    """Map every tensor of a ``.safetensors`` file (memory-mapped) by name, sorted by name (as llama.cpp reads them)."""
    path = Path(path)
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read safetensors file ({e})") from e
    if buf.size < 8:
        raise ConversionError(f"{path}: too short for a safetensors file (expected an 8-byte header length)")
    (n_header,) = struct.unpack("<Q", bytes(buf[:8]))
    if 8 + n_header > buf.size:
        raise ConversionError(f"{path}: header length {n_header} runs past the end of the file")
    try:
        header = json.loads(bytes(buf[8 : 8 + n_header]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: safetensors header is not valid JSON ({e})") from e
    data = buf[8 + n_header :]
    tensors: dict[str, SafeTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype")
        if dtype not in _DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        shape = tuple(int(d) for d in entry["shape"])
        start, end = (int(x) for x in entry["data_offsets"])
        np_dtype = _DTYPES[dtype]
        n = int(np.prod(shape, dtype=np.int64))
        if end > data.size or end - start != n * np_dtype.itemsize:
            raise ConversionError(f"{path}: tensor {name!r} offsets {start}..{end} do not match shape {shape} {dtype}")
        raw = data[start:end].view(np_dtype).reshape(shape)
        tensors[name] = SafeTensor(name, dtype, shape, raw)
    return dict(sorted(tensors.items()))


def read_model_tensors(hf_dir: Path) -> dict[str, SafeTensor]:
    """All tensors of a Hugging Face model folder (``model.safetensors`` or its sharded index)."""
    single = hf_dir / "model.safetensors"
    index = hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, SafeTensor] = {}
        for shard in shards:
            tensors.update(read_safetensors(hf_dir / shard))
        return tensors
    raise ConversionError(
        f"{hf_dir}: no model.safetensors or model.safetensors.index.json (only safetensors is supported)"
    )
