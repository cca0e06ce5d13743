"""Where embedkit keeps its data: EMBEDKIT_HOME (embedded database, converted and fetched models)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def embedkit_home() -> Path:
    """EMBEDKIT_HOME, or the user's data directory for embedkit (created on demand)."""
    env = os.environ.get("EMBEDKIT_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("embedkit"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Where fetched and converted models live: EMBEDKIT_MODELS, else EMBEDKIT_HOME/models."""
    env = os.environ.get("EMBEDKIT_MODELS")
    path = Path(env).expanduser() if env else embedkit_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
