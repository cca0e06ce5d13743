"""The mmap GGUF reader against gguf-py's GGUFReader, and its validation errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf_samples import write_sample

from embedkit.errors import GGUFError
from embedkit.gguf import GGMLType, GGUFFile, StringArray, type_info

gguf = pytest.importorskip("gguf")


def _reference_value(field):
    """gguf-py's decoded value of a field, in the form our reader returns."""
    types = field.types
    if types[0] != gguf.GGUFValueType.ARRAY:
        return field.contents()
    if types[1] == gguf.GGUFValueType.ARRAY:
        return field.contents()
    return field.contents()


def _ours_as_python(value):
    if isinstance(value, StringArray):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        out = []
        for v in value:
            out.extend(_ours_as_python(v)) if isinstance(v, np.ndarray | list | StringArray) else out.append(v)
        return out
    return value


def assert_same_as_gguf_py(path: Path) -> None:
    from gguf_reference import gguf_py_reader  # imports gguf, which this module only imports if installed

    ref = gguf_py_reader(path)
    with GGUFFile(path) as ours:
        ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.metadata) == list(ref_fields)
        for key, field in ref_fields.items():
            expected = _reference_value(field)
            got = _ours_as_python(ours.metadata[key])
            if isinstance(expected, float):
                assert got == pytest.approx(expected, rel=0, abs=0), key
            else:
                assert got == expected, key
            assert int(ours.metadata_types[key]) == int(field.types[0]), key
        assert list(ours.tensors) == [t.name for t in ref.tensors]
        for t in ref.tensors:
            mine = ours.tensors[t.name]
            assert int(mine.ggml_type) == int(t.tensor_type), t.name
            assert list(mine.shape) == [int(d) for d in t.shape], t.name
            assert mine.offset == t.data_offset, t.name
            assert mine.n_bytes == t.n_bytes, t.name
            assert np.array_equal(mine.data, np.asarray(t.data).reshape(-1).view(np.uint8)), t.name


VOCABS = ["bert-bge", "falcon", "gpt-2", "llama-bpe", "llama-spm", "qwen2"]


def test_every_vocab_fixture_is_compared(vocab_dir: Path) -> None:
    assert sorted(p.name for p in vocab_dir.glob("*.gguf")) == [f"ggml-vocab-{v}.gguf" for v in VOCABS]


# gguf-py's reader takes several seconds on each of the four large vocabularies (it builds a numpy view per string) and
# they exercise the same code of ours as the two small ones: the full comparison runs with the slow tests.
LARGE_VOCABS = {"falcon", "gpt-2", "llama-bpe", "qwen2"}


@pytest.mark.parametrize("vocab", [pytest.param(v, marks=pytest.mark.slow) if v in LARGE_VOCABS else v for v in VOCABS])
def test_matches_gguf_py_on_vocab_fixture(vocab_dir: Path, vocab: str) -> None:
    assert_same_as_gguf_py(vocab_dir / f"ggml-vocab-{vocab}.gguf")


@pytest.mark.slow
def test_matches_gguf_py_on_gemma(gemma_path: Path) -> None:
    assert_same_as_gguf_py(gemma_path)


def test_matches_gguf_py_on_every_value_type(tmp_path: Path) -> None:
    assert_same_as_gguf_py(write_sample(tmp_path / "s.gguf"))


@pytest.mark.slow
def test_tensor_data_is_a_zero_copy_view(gemma_path: Path) -> None:
    with GGUFFile(gemma_path) as f:
        t = f.tensor("token_embd.weight")
        data = t.data
        assert not data.flags.owndata and not data.flags.writeable
        assert data.size == t.n_bytes == t.n_elements // 32 * 34
        assert t.np_shape == (262144, 640) and t.ggml_type == GGMLType.Q8_0
        assert t.rows_view().shape == (262144, type_info("Q8_0").row_bytes(640))


def _header(version=3, n_tensors=0, n_kv=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _parse(tmp_path: Path, raw: bytes) -> GGUFFile:
    p = tmp_path / "bad.gguf"
    p.write_bytes(raw)
    return GGUFFile(p)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty file"),
        (b"GGU", "truncated header"),
        (b"GGML" + bytes(20), "bad magic"),
        (_header(version=1), "unsupported GGUF version 1"),
        (_header(version=7), "unsupported GGUF version 7"),
        (b"GGUF" + struct.pack(">I", 3) + bytes(16), "big-endian"),
        (_header(n_kv=1)[:-3], "truncated header"),
        (_header(n_kv=10**12), "metadata count 1000000000000 cannot fit"),
        (_header(n_tensors=10**12), "tensor count 1000000000000 cannot fit"),
        (_header(n_kv=1) + struct.pack("<Q", 2**60) + bytes(16), "runs past the end"),
        (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + bytes(8), "unknown value type 99"),
        (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**40) + bytes(8),
         "array length"),
        (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61) + bytes(8),
         "array length"),
        (_header(n_kv=2) + _kv_string("a", "x") + _kv_string("a", "y"), "duplicate metadata key"),
        (_header(n_kv=1) + struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 48),
         "not a positive power of two"),
    ],
)
def test_malformed_headers_raise_gguf_error(tmp_path: Path, raw: bytes, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        _parse(tmp_path, raw)


def _tensor_info(name: str, shape, type_id: int, offset: int) -> bytes:
    n = name.encode()
    return (struct.pack("<Q", len(n)) + n + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack("<IQ", type_id, offset))


def _with_tensors(infos: list[bytes], data_bytes: int) -> bytes:
    body = _header(n_tensors=len(infos)) + b"".join(infos)
    body += bytes(-len(body) % 32)
    return body + bytes(data_bytes)


@pytest.mark.parametrize(
    ("infos", "data_bytes", "message"),
    [
        ([_tensor_info("t", [64], 0, 0)], 100, "runs past the end of the file"),
        ([_tensor_info("t", [64], 0, 0), _tensor_info("u", [64], 0, 128)], 512, "overlaps"),
        ([_tensor_info("t", [64], 0, 0), _tensor_info("t", [64], 0, 256)], 512, "duplicate tensor name"),
        ([_tensor_info("t", [64], 0, 4)], 512, "not aligned"),
        ([_tensor_info("t", [64], 77, 0)], 512, "unknown ggml type 77"),
        ([_tensor_info("t", [33], 8, 0)], 512, "not a multiple"),
        ([_tensor_info("t", [2**40, 2**40], 0, 0)], 512, "overflows"),
        ([_tensor_info("t", [1, 1, 1, 1, 1], 0, 0)], 512, "dimensions"),
    ],
)
def test_malformed_tensor_tables_raise_gguf_error(tmp_path: Path, infos, data_bytes: int, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        _parse(tmp_path, _with_tensors(infos, data_bytes))


def test_missing_file_and_missing_key_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "nope.gguf")
    with GGUFFile(write_sample(tmp_path / "s.gguf")) as f:
        with pytest.raises(GGUFError, match="missing metadata key 'llama.block_count'"):
            f.require("llama.block_count")
        with pytest.raises(GGUFError, match="missing tensor 'x'"):
            f.tensor("x")
        assert f.arch_get("block_count", 5) == 5
