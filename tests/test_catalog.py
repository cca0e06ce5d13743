"""The catalog on a made-up known model whose parts are files of an installed package (no download): parts
joined in order, sha256 checked, the file kept in EMBEDKIT_MODELS and found there afterwards."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from embedkit import catalog
from embedkit.errors import ModelNotFoundError


@pytest.fixture
def made_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """A known model "made-up-model" in two parts inside the package `embedkit_made_up_parts`."""
    rng = np.random.default_rng(4242)
    data = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    package = tmp_path / "site" / "embedkit_made_up_parts"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "m.part00").write_bytes(data[:1000])
    (package / "data" / "m.part01").write_bytes(data[1000:])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("EMBEDKIT_MODELS", str(tmp_path / "models"))
    parts = tuple(
        catalog.WheelPart(f"embedkit-made-up-parts=={i}", f"embedkit_made_up_parts/data/m.part0{i}") for i in range(2)
    )
    model = catalog.KnownModel("made-up-model", "made-up.gguf", "embed", "test data", parts,
                               hashlib.sha256(data).hexdigest())  # fmt: skip
    monkeypatch.setitem(catalog.KNOWN_MODELS, model.name, model)
    return model.name, data


def test_known_model_is_joined_checked_and_kept(made_up: tuple[str, bytes]) -> None:
    name, data = made_up
    assert catalog.installed_path(name) is None
    notes: list[str] = []
    path = catalog.ensure_model(name, notify=notes.append)
    assert path.read_bytes() == data and path.parent == catalog.models_dir()
    assert notes and "fetching made-up-model" in notes[0]
    assert catalog.installed_path(name) == path
    notes.clear()
    assert catalog.resolve_model(name, notify=notes.append) == path and notes == []  # kept: not fetched again


def test_sha256_mismatch_is_refused_and_nothing_is_kept(made_up: tuple[str, bytes], monkeypatch) -> None:
    name, _ = made_up
    monkeypatch.setitem(catalog.KNOWN_MODELS, name, dataclasses.replace(catalog.KNOWN_MODELS[name], sha256="0" * 64))
    with pytest.raises(ModelNotFoundError, match="does not match"):
        catalog.ensure_model(name, notify=None)
    assert catalog.installed_path(name) is None


def test_resolve_model_paths_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert catalog.resolve_model(str(f)) == f
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        catalog.resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="neither an existing file nor a known model name"):
        catalog.resolve_model(tmp_path / "missing.gguf")
