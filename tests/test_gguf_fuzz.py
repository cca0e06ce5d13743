"""Truncated and mutated real GGUF files: only GGUFError (or a clean read) may come out."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gguf_samples import write_sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.errors import GGUFError
from embedkit.gguf import GGUFFile, StringArray

_TMP = Path(tempfile.mkdtemp(prefix="embedkit-fuzz-"))
SAMPLE = write_sample(_TMP / "sample.gguf").read_bytes()
VOCAB = Path(__file__).resolve().parent / "data" / "llama-vocab" / "ggml-vocab-bert-bge.gguf"


def _touch_everything(f: GGUFFile) -> None:
    for value in f.metadata.values():
        if isinstance(value, StringArray):
            value.tolist()
    for t in f.tensors.values():
        assert t.data.size == t.n_bytes
        int(t.data[-1]) if t.n_bytes else None


def _check(raw: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=_TMP, suffix=".gguf")
    try:
        os.write(fd, raw)
        os.close(fd)
        try:
            with GGUFFile(name) as f:
                _touch_everything(f)
        except GGUFError:
            pass
    finally:
        os.unlink(name)


# 64-bit values that make lengths and counts absurd, negative as signed, or off by one
NASTY = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, len(SAMPLE), len(SAMPLE) + 1]


@st.composite
def mutated(draw, base: bytes) -> bytes:
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "u64", "u32", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[pos] ^= draw(st.integers(1, 255))
        elif kind == "u64":
            raw[pos : pos + 8] = draw(st.sampled_from(NASTY)).to_bytes(8, "little")
        elif kind == "u32":
            raw[pos : pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[pos : pos + draw(st.integers(1, 16))]
    return bytes(raw)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SAMPLE))
def test_mutated_sample_files_fail_cleanly(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_vocab_header_region_fails_cleanly(data) -> None:
    base = VOCAB.read_bytes()
    raw = bytearray(base)
    pos = data.draw(st.integers(0, 4096))
    raw[pos : pos + 8] = data.draw(st.sampled_from(NASTY)).to_bytes(8, "little")
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(base))))
    _check(bytes(raw[:cut]))


def test_every_prefix_length_of_the_header_fails_cleanly() -> None:
    rng = np.random.default_rng(1717)
    with GGUFFile(_write(SAMPLE)) as f:  # bytes past the last tensor are padding: cutting them is harmless
        end = max(t.offset + t.n_bytes for t in f.tensors.values())
    for cut in sorted(set(rng.integers(0, end, 200).tolist()) | set(range(0, 64))):
        with pytest.raises(GGUFError):
            with GGUFFile(_write(SAMPLE[:cut])):
                pass


def _write(raw: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=_TMP, suffix=".gguf")
    os.write(fd, raw)
    os.close(fd)
    return Path(name)
