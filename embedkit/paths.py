"""Where embedkit keeps its data: EMBEDKIT_HOME (embedded database, converted and fetched models)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from embedkit.errors import InputError


def embedkit_home() -> Path:
    """EMBEDKIT_HOME, or the user's data directory for embedkit (created on demand)."""
    env = os.environ.get("EMBEDKIT_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("embedkit"))
    return _folder(home, "EMBEDKIT_HOME" if env else "embedkit's data folder")


def models_dir() -> Path:
    """Where fetched and converted models live: EMBEDKIT_MODELS, else EMBEDKIT_HOME/models."""
    env = os.environ.get("EMBEDKIT_MODELS")
    path = Path(env).expanduser() if env else embedkit_home() / "models"
    return _folder(path, "EMBEDKIT_MODELS" if env else "the models folder (EMBEDKIT_HOME/models)")


def _folder(path: Path, what: str) -> Path:
    """`path`, created if missing; an InputError naming `what` if it cannot be a folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{what}: {path} exists and is not a folder; expected a folder") from None
    except OSError as e:
        raise InputError(f"{what}: cannot create the folder {path} ({e.strerror})") from None
    return path
