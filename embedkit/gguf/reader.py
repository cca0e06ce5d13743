"""A validating, zero-copy GGUF reader over one read-only mmap.

Layout (ggml's gguf.h): magic, version u32, tensor count u64, metadata count u64, metadata
key/value pairs, tensor infos, padding to `general.alignment`, tensor data. Every length and
count is checked against the bytes that remain before anything is allocated, so a malformed
file raises GGUFError (naming the field and byte offset) instead of crashing or hanging.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from embedkit.errors import GGUFError
from embedkit.gguf.constants import (
    DEFAULT_ALIGNMENT,
    GGML_MAX_DIMS,
    GGUF_MAGIC,
    MAX_ARRAY_NESTING,
    SCALAR_DTYPES,
    SUPPORTED_VERSIONS,
    ValueType,
)
from embedkit.gguf.types import GGML_TYPES, GGMLType

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1


class StringArray(Sequence[str]):
    """A GGUF array of strings, decoded on access (vocabularies hold 100k+ of them)."""

    def __init__(self, buf: memoryview, starts: np.ndarray, lengths: np.ndarray):
        self._buf = buf
        self._starts = starts
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = int(self._starts[i])
        return _decode(self._buf[s : s + int(self._lengths[i])])

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def raw(self, i: int) -> bytes:
        """The undecoded bytes of item `i`."""
        s = int(self._starts[i])
        return bytes(self._buf[s : s + int(self._lengths[i])])

    def tolist(self) -> list[str]:
        """All items as a list of str (one copy of the region, then one slice per item)."""
        if not len(self):
            return []
        base = int(self._starts[0])
        fast = self._tolist_valid_utf8(base)
        if fast is not None:
            return fast
        region = bytes(self._buf[base : int(self._starts[-1] + self._lengths[-1])])
        starts = (self._starts - base).tolist()
        ends = (self._starts + self._lengths - base).tolist()
        return [region[s:e].decode("utf-8", "surrogateescape") for s, e in zip(starts, ends, strict=True)]

    def _tolist_valid_utf8(self, base: int) -> list[str] | None:
        """Fast path (tokenizers' vocabularies): drop the length prefixes with numpy, decode all items
        as one string and slice it by character offsets. None when some item is not valid UTF-8."""
        lengths = self._lengths.astype(np.int64)
        starts = self._starts.astype(np.int64) - base
        region = np.frombuffer(self._buf, np.uint8, count=int(starts[-1] + lengths[-1]), offset=base)
        byte_ends = np.cumsum(lengths)
        byte_starts = byte_ends - lengths
        payload = region[np.repeat(starts - byte_starts, lengths) + np.arange(int(byte_ends[-1]))]
        lead = (payload & 0xC0) != 0x80
        nonempty = lengths > 0
        if not lead[byte_starts[nonempty]].all():
            return None  # an item starts inside a character
        try:
            text = payload.tobytes().decode("utf-8")  # strict: every item boundary is a char boundary
        except UnicodeDecodeError:
            return None
        char_pos = np.concatenate(([0], np.cumsum(lead)))
        cs, ce = char_pos[byte_starts].tolist(), char_pos[byte_ends].tolist()
        return [text[s:e] for s, e in zip(cs, ce, strict=True)]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"StringArray(len={len(self)})"


def _decode(raw: memoryview | bytes) -> str:
    # surrogateescape keeps invalid UTF-8 (some vocabularies have it) round-trippable
    return str(raw, "utf-8", "surrogateescape")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: its name, type, GGUF-order shape and a view of its bytes."""

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # GGUF order: shape[0] is the contiguous (innermost) dimension
    offset: int  # absolute byte offset in the file
    n_bytes: int
    _file: GGUFFile

    @property
    def np_shape(self) -> tuple[int, ...]:
        """Shape in numpy order (a weight matrix is (n_out, n_in))."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def data(self) -> np.ndarray:
        """The raw bytes as a read-only uint8 view over the mmap (no copy)."""
        return self._file._view(self.offset, self.n_bytes)

    def rows_view(self) -> np.ndarray:
        """The raw bytes as (n_rows, row_bytes) uint8, a row being one ne[0]-long row."""
        row_bytes = GGML_TYPES[self.ggml_type].row_bytes(self.shape[0])
        return self.data.reshape(-1, row_bytes)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped bytes."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, what: str, at: int | None = None) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at byte offset {self.pos if at is None else at})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated {what}: needs {n} bytes, {self.size - self.pos} left")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        start = self.pos
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            raise self.fail(f"{what} length {n} runs past the end of the file", start)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return _decode(raw)


class GGUFFile:
    """A GGUF file opened read-only through mmap: metadata, tensor table, zero-copy tensor data."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._mmap: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{self.path}: empty file, expected a GGUF model")
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror or e}") from None
        self._buf = memoryview(self._mmap)
        self._array = np.frombuffer(self._mmap, dtype=np.uint8)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, ValueType] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise

    # ---- parsing -------------------------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(self._buf, self.path)
        c.need(4, "header (magic)")
        magic = bytes(self._buf[0:4])
        if magic != GGUF_MAGIC:
            raise c.fail(f"bad magic {magic!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")
        c.pos = 4
        version = c.u32("header (version)")
        if version not in SUPPORTED_VERSIONS:
            if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise c.fail("big-endian GGUF files are not supported", 4)
            raise c.fail(f"unsupported GGUF version {version} (supported: 2, 3)", 4)
        self.version = version
        n_tensors = c.u64("header (tensor count)")
        n_kv = c.u64("header (metadata count)")
        # each metadata pair takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info 8+4+4+8
        left = c.size - c.pos
        if n_kv > left // 13:
            raise c.fail(f"metadata count {n_kv} cannot fit in the {left} bytes that follow the header", 16)
        if n_tensors > left // 24:
            raise c.fail(f"tensor count {n_tensors} cannot fit in the {left} bytes that follow the header", 8)

        for _ in range(n_kv):
            key_at = c.pos
            key = c.string("metadata key")
            if key in self.metadata:
                raise c.fail(f"duplicate metadata key {key!r}", key_at)
            vtype = self._value_type(c, f"type of metadata {key!r}")
            self.metadata[key] = self._value(c, vtype, key, 0)
            self.metadata_types[key] = vtype

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            raise GGUFError(f"{self.path}: general.alignment {alignment!r} is not a positive power of two")
        self.alignment = alignment

        infos: list[tuple[str, GGMLType, tuple[int, ...], int, int]] = []
        names: set[str] = set()
        for i in range(n_tensors):
            at = c.pos
            name = c.string(f"tensor {i} name")
            if name in names:
                raise c.fail(f"duplicate tensor name {name!r}", at)
            names.add(name)
            n_dims = c.u32(f"tensor {name!r} dimension count")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise c.fail(f"tensor {name!r} has {n_dims} dimensions (expected 1..{GGML_MAX_DIMS})")
            c.need(8 * n_dims, f"tensor {name!r} shape")
            shape = tuple(c.u64(f"tensor {name!r} shape") for _ in range(n_dims))
            n_el = 1
            for d in shape:
                n_el *= d
                if n_el > _INT64_MAX:
                    raise c.fail(f"tensor {name!r} shape {shape} overflows the element count", at)
            type_at = c.pos
            type_id = c.u32(f"tensor {name!r} type")
            try:
                gtype = GGMLType(type_id)
            except ValueError:
                raise c.fail(f"tensor {name!r} has unknown ggml type {type_id}", type_at) from None
            info = GGML_TYPES[gtype]
            if shape[0] % info.block_size:
                raise c.fail(
                    f"tensor {name!r} row length {shape[0]} is not a multiple of the "
                    f"{gtype.name} block size {info.block_size}",
                    at,
                )
            n_bytes = n_el // info.block_size * info.type_size
            offset = c.u64(f"tensor {name!r} data offset")
            if offset % alignment:
                raise c.fail(f"tensor {name!r} data offset {offset} is not aligned to {alignment}", c.pos - 8)
            infos.append((name, gtype, shape, offset, n_bytes))

        self.data_offset = -(-c.pos // alignment) * alignment
        data_size = c.size - self.data_offset
        for name, gtype, shape, offset, n_bytes in infos:
            if offset + n_bytes > data_size:
                raise GGUFError(
                    f"{self.path}: tensor {name!r} data ({n_bytes} bytes at data offset {offset}) runs past "
                    f"the end of the file (at byte offset {self.data_offset + offset})"
                )
            self.tensors[name] = TensorInfo(name, gtype, shape, self.data_offset + offset, n_bytes, self)
        spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in self.tensors.values())
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
            if start_b < end_a:
                raise GGUFError(
                    f"{self.path}: tensor {name_b!r} data overlaps tensor {name_a!r} (at byte offset {start_b})"
                )

    def _value_type(self, c: _Cursor, what: str) -> ValueType:
        at = c.pos
        t = c.u32(what)
        try:
            return ValueType(t)
        except ValueError:
            raise c.fail(f"unknown value type {t} for {what.removeprefix('type of ')}", at) from None

    def _value(self, c: _Cursor, vtype: ValueType, key: str, depth: int) -> Any:
        if vtype == ValueType.STRING:
            return c.string(f"metadata {key!r} string")
        if vtype == ValueType.ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise c.fail(f"metadata {key!r} nests arrays deeper than {MAX_ARRAY_NESTING}")
            etype = self._value_type(c, f"type of metadata {key!r} array items")
            at = c.pos
            count = c.u64(f"metadata {key!r} array length")
            return self._array_value(c, etype, count, key, depth, at)
        dtype = SCALAR_DTYPES[vtype]
        c.need(dtype.itemsize, f"metadata {key!r} value")
        v = np.frombuffer(self._buf, dtype=dtype, count=1, offset=c.pos)[0]
        c.pos += dtype.itemsize
        if vtype == ValueType.BOOL:
            return bool(v)
        return v.item()

    def _array_value(self, c: _Cursor, etype: ValueType, count: int, key: str, depth: int, at: int) -> Any:
        left = c.size - c.pos
        if etype == ValueType.STRING:
            if count > left // 8:
                raise c.fail(f"metadata {key!r} array length {count} runs past the end of the file", at)
            return self._string_array(c, count, key)
        if etype == ValueType.ARRAY:
            if count > left // 12:
                raise c.fail(f"metadata {key!r} array length {count} runs past the end of the file", at)
            items = []
            for _ in range(count):
                inner_type = self._value_type(c, f"type of metadata {key!r} nested array items")
                inner_at = c.pos
                inner_count = c.u64(f"metadata {key!r} nested array length")
                items.append(self._array_value(c, inner_type, inner_count, key, depth + 1, inner_at))
            return items
        dtype = SCALAR_DTYPES[etype]
        if count > left // dtype.itemsize:
            raise c.fail(f"metadata {key!r} array length {count} runs past the end of the file", at)
        arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=c.pos)
        c.pos += count * dtype.itemsize
        return arr.astype(bool) if etype == ValueType.BOOL else arr

    def _string_array(self, c: _Cursor, count: int, key: str) -> StringArray:
        # The hot loop of opening a big vocabulary: one unpack and one append per string;
        # bounds are checked once afterwards (an overlong length makes the next unpack fail).
        starts: list[int] = []
        append = starts.append
        unpack = _U64.unpack_from
        buf, pos = c.buf, c.pos
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                append(pos)
                pos += n
        except (struct.error, OverflowError):
            c.pos = starts[-1] if starts else pos
            raise c.fail(f"metadata {key!r} string {len(starts)} runs past the end of the file") from None
        if pos > c.size:
            c.pos = starts[-1] - 8
            raise c.fail(f"metadata {key!r} string {count - 1} runs past the end of the file")
        c.pos = pos
        start_arr = np.array(starts, dtype=np.int64)
        ends = np.empty_like(start_arr)
        ends[:-1] = start_arr[1:] - 8
        if count:
            ends[-1] = pos
        return StringArray(buf, start_arr, ends - start_arr)

    # ---- access --------------------------------------------------------------------------
    def _view(self, offset: int, n_bytes: int) -> np.ndarray:
        if self._mmap is None:
            raise GGUFError(f"{self.path}: file is closed")
        return self._array[offset : offset + n_bytes]

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, or `default` when the key is absent."""
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        """A metadata value that must be present (GGUFError naming the key otherwise)."""
        try:
            return self.metadata[key]
        except KeyError:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}") from None

    @property
    def architecture(self) -> str:
        """`general.architecture`."""
        arch = self.require("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: general.architecture is not a string")
        return arch

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """`{arch}.{suffix}` from the metadata, or `default`."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called `name` (GGUFError if the file has none)."""
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: missing tensor {name!r}") from None

    def identity_sha256(self) -> str:
        """sha256 of the header, metadata and tensor table: identifies a model without hashing its weights."""
        return hashlib.sha256(self._buf[: self.data_offset]).hexdigest()

    def close(self) -> None:
        """Release the mapping (views handed out earlier must not be used afterwards)."""
        if self._mmap is not None:
            self._array = None  # type: ignore[assignment]
            try:
                self._buf.release()
                self._mmap.close()
            except BufferError:
                pass  # views (tensor data, string arrays) still alive: the mapping goes with them
            self._mmap = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"
