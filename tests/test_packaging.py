"""What pyproject.toml promises a wheel carries exists in the repository."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_package_data_files_exist() -> None:
    """py.typed (PEP 561: the package's type hints are meant to be used) and any other declared data."""
    for package, patterns in SETUPTOOLS["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package.replace(".", "/")).glob(pattern)), f"package-data {package}: {pattern}"


def test_data_files_exist() -> None:
    for target, patterns in SETUPTOOLS["data-files"].items():
        for pattern in patterns:
            assert list(REPO.glob(pattern)), f"data-files {target}: {pattern} matches nothing"
