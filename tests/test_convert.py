"""HF -> GGUF converter: safetensors reader vs the `safetensors` package, and our GGUF vs llama.cpp's.

The llama.cpp reference is a manifest (tests/data/embed/llamacpp_minilm_manifest.json, see the README
there) of the files llama.cpp's convert_hf_to_gguf.py wrote for all-MiniLM-L6-v2: every metadata key
with its GGUF value types and value (arrays by sha256), every tensor's name, type, shape and sha256.
Tolerance: exact, except the descriptive general.* naming keys llama.cpp guesses from model cards.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from embedkit.convert import convert_hf_to_gguf, read_safetensors
from embedkit.errors import ConversionError

MANIFEST = Path(__file__).parent / "data" / "embed" / "llamacpp_minilm_manifest.json"
# Free-form naming llama.cpp derives heuristically (model card, folder names); not part of the format contract.
DESCRIPTIVE_KEYS = {"general.name", "general.version", "general.organization", "general.basename", "general.size_label"}
# embedkit's own addition (sentence-transformers' truncation length); llama.cpp ignores unknown keys
EMBEDKIT_KEYS = {"sentence_transformers.max_seq_length"}


def test_safetensors_reader_matches_reference(tmp_path: Path) -> None:
    """Every dtype we read gives the values the `safetensors` package (and torch for BF16) gives."""
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    rng = np.random.default_rng(7)
    arrays = {
        "a.f32": rng.standard_normal((5, 7)).astype(np.float32),
        "b.f16": rng.standard_normal((3, 4, 2)).astype(np.float16),
        "c.i64": rng.integers(-1000, 1000, (9,)).astype(np.int64),
    }
    save_file(arrays, tmp_path / "x.safetensors")
    got = read_safetensors(tmp_path / "x.safetensors")
    assert list(got) == sorted(arrays)
    for name, ref in arrays.items():
        assert got[name].shape == ref.shape
        np.testing.assert_array_equal(got[name].raw, ref)
        np.testing.assert_array_equal(got[name].to_float32(), ref.astype(np.float32))
    bf = torch.from_numpy(rng.standard_normal((6, 3)).astype(np.float32)).to(torch.bfloat16)
    save_torch({"w": bf}, tmp_path / "bf.safetensors")
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf.safetensors")["w"].to_float32(), bf.float().numpy())


def test_safetensors_reader_rejects_bad_files(tmp_path: Path) -> None:
    """Truncated or inconsistent files raise ConversionError naming the file."""
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ConversionError, match="short.safetensors"):
        read_safetensors(short)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)  # 8 of the 16 data bytes
    with pytest.raises(ConversionError, match="offsets"):
        read_safetensors(bad)


def _load_manifest_maker():
    """tests/data/embed/make_llamacpp_manifest.py, the script that made the committed manifest."""
    maker = MANIFEST.parent / "make_llamacpp_manifest.py"
    spec = importlib.util.spec_from_file_location("make_llamacpp_manifest", maker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gguf_manifest(path: Path) -> dict:
    """Our file's manifest, made by the same code as the committed llama.cpp one (gguf-py reads it)."""
    return _load_manifest_maker().manifest(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_convert_matches_llamacpp(minilm_hf_dir: Path, tmp_path: Path, outtype: str) -> None:
    """Same metadata keys, value types, values and order, same tensor table and bytes as llama.cpp's converter."""
    ours = _gguf_manifest(convert_hf_to_gguf(minilm_hf_dir, tmp_path / f"m-{outtype}.gguf", outtype))
    theirs = json.loads(MANIFEST.read_text())[outtype]
    assert ours["alignment"] == theirs["alignment"]
    assert {e["key"]: e["value"] for e in ours["metadata"] if e["key"] in EMBEDKIT_KEYS} == {
        "sentence_transformers.max_seq_length": 256
    }
    ours_kv = [e for e in ours["metadata"] if e["key"] not in DESCRIPTIVE_KEYS | EMBEDKIT_KEYS]
    theirs_kv = [e for e in theirs["metadata"] if e["key"] not in DESCRIPTIVE_KEYS]
    assert [e["key"] for e in ours_kv] == [e["key"] for e in theirs_kv]
    for a, b in zip(ours_kv, theirs_kv, strict=True):
        assert a == b, a["key"]
    assert {e["key"] for e in ours["metadata"]} & DESCRIPTIVE_KEYS == {"general.name"}
    assert [(t["name"], t["type"], t["shape"]) for t in ours["tensors"]] == [
        (t["name"], t["type"], t["shape"]) for t in theirs["tensors"]
    ]
    pairs = zip(ours["tensors"], theirs["tensors"], strict=True)
    differing = [a["name"] for a, b in pairs if a["sha256"] != b["sha256"]]
    assert differing == []


@pytest.mark.slow
def test_convert_errors(minilm_hf_dir: Path, tmp_path: Path) -> None:
    """Bad inputs give one ConversionError naming the problem."""
    with pytest.raises(ConversionError, match="not a directory"):
        convert_hf_to_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    with pytest.raises(ConversionError, match="outtype"):
        convert_hf_to_gguf(minilm_hf_dir, tmp_path / "x.gguf", "q3_k")
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ConversionError, match="not supported"):
        convert_hf_to_gguf(other, tmp_path / "x.gguf")


@pytest.mark.slow
def test_cli_convert(minilm_hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`embedkit convert --json` writes a loadable file and describes it; errors are one line, exit 1."""
    from embedkit.cli.main import main
    from embedkit.gguf import GGUFFile

    out = tmp_path / "m.gguf"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(minilm_hf_dir), str(out), "--outtype", "f16", "--json"])
    assert e.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["architecture"] == "bert" and summary["tensors"] == 101
    with GGUFFile(out) as f:
        assert f.require("general.file_type") == 1
        assert f.tensor("blk.0.ffn_up.weight").ggml_type.name == "F16"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "nope"), str(out)])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_convert_refuses_to_overwrite_what_is_not_gguf(minilm_hf_dir: Path, tmp_path: Path) -> None:
    """`convert HF HF/model.safetensors` replaced the model's own weights with the GGUF (exit 0, data lost);
    an OUT that cannot be written ended in 'internal error (FileNotFoundError ...)'."""
    import os

    folder = tmp_path / "hf"  # links to the session's folder: a failure here must not damage the fixture
    folder.mkdir()
    for item in minilm_hf_dir.iterdir():
        (folder / item.name).symlink_to(item)
    weights = folder / "model.safetensors"
    with pytest.raises(ConversionError, match="model.safetensors: exists and is not a GGUF file; refusing"):
        convert_hf_to_gguf(folder, weights)
    assert weights.is_symlink() and weights.read_bytes()[8:9] == b"{"  # still the safetensors header
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConversionError, match="pipe: exists and is not a regular file"):
        convert_hf_to_gguf(folder, tmp_path / "pipe")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match=r"x.gguf: .*file is not a folder"):
        convert_hf_to_gguf(folder, tmp_path / "file" / "sub" / "x.gguf")
