"""Alembic glue: apply the migrations in `migrations/` to a database, serialised by an advisory lock."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from embedkit.errors import StoreError

# Any two int4 values work; this pair is embedkit's "schema migration" lock.
_MIGRATION_LOCK = (0x656B, 1)


def migrations_dir() -> Path:
    """The `migrations/` folder: beside the `embedkit` package in a checkout (or editable install), else the
    copy a wheel installs under <prefix>/share/embedkit/migrations (any install scheme's data path)."""
    beside = Path(__file__).resolve().parents[2] / "migrations"
    if (beside / "env.py").is_file():
        return beside
    candidates = [Path(sys.prefix)] + [Path(sysconfig.get_path("data", scheme)) for scheme in _schemes()]
    for data in candidates:
        installed = data / "share" / "embedkit" / "migrations"
        if (installed / "env.py").is_file():
            return installed
    raise StoreError(f"embedkit's database migrations are missing (looked in {beside} and <prefix>/share/embedkit)")


def _schemes() -> list[str]:
    return [s for s in ("posix_user", "nt_user", "osx_framework_user") if s in sysconfig.get_scheme_names()]


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at `migrations/`, optionally bound to a live connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision in `migrations/versions`."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the schema to `revision`; concurrent callers wait on one another."""
    connection.execute(text("SELECT pg_advisory_lock(:a, :b)"), {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]})
    try:
        connection.commit()
        command.upgrade(alembic_config(connection), revision)
        connection.commit()
    finally:
        connection.execute(
            text("SELECT pg_advisory_unlock(:a, :b)"), {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]}
        )
        connection.commit()
