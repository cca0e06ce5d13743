"""Engine and connections: pick the database (EMBEDKIT_DATABASE_URL or the embedded server), check that it
is reachable and has pgvector >= 0.8, and bring its schema to the newest migration on first use."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError

from embedkit.errors import StoreError
from embedkit.store import migrate
from embedkit.store.server import start_embedded

MIN_PGVECTOR = (0, 8, 0)
MIN_POSTGRES = 130000

# The pool logs a failed reset of a connection the server closed with a traceback; what happened reaches the
# user as one StoreError line instead (see `connection_error`).
logging.getLogger("sqlalchemy").addHandler(logging.NullHandler())


def _home() -> Path:
    from embedkit.paths import embedkit_home

    return Path(embedkit_home())


def normalize_url(url: str, name: str = "EMBEDKIT_DATABASE_URL") -> str:
    """Turn any postgres URL (postgres://, postgresql://, postgresql+psycopg2://) into a psycopg 3 one; errors
    name the setting `name` it came from."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StoreError(f"{name} is not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"{name} must be a PostgreSQL URL, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def database_url(home: Path | None = None) -> str:
    """The SQLAlchemy URL to use: EMBEDKIT_DATABASE_URL if set, else the embedded server (started on demand)."""
    env = os.environ.get("EMBEDKIT_DATABASE_URL")
    if env:
        return normalize_url(env)
    return start_embedded(home if home is not None else _home())


def psql_url(url: str) -> str:
    """The same URL without the SQLAlchemy driver suffix, ready for `psql` (a Unix-socket folder is left
    unescaped in `?host=`, which libpq accepts, so the URL stays readable)."""
    u = make_url(url).set(drivername="postgresql")
    socket_dir = u.query.get("host") if not u.host else None
    if isinstance(socket_dir, str) and socket_dir.startswith("/") and len(u.query) == 1:
        auth = quote(u.username or "", safe="") + (":" + quote(u.password, safe="") if u.password else "")
        return f"postgresql://{auth}{'@' if auth else ''}/{quote(u.database or '', safe='')}?host={socket_dir}"
    return u.render_as_string(hide_password=False)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("-")[0].split(".") if p.isdigit())


@dataclass(frozen=True)
class ServerInfo:
    """What the server runs: PostgreSQL and pgvector versions, and the schema revision."""

    postgres: str
    pgvector: str | None
    revision: str | None


def server_where(url: str) -> str:
    """Where the server of `url` is, for messages: its host, or its Unix-socket folder."""
    u = make_url(url)
    return u.host or (u.query.get("host") if u.query else None) or "localhost"


def create_store_engine(url: str, embedded: bool = False) -> Engine:
    """A SQLAlchemy engine for `url` (psycopg 3 driver), checked for reachability and pgvector, with the
    schema upgraded to the newest migration; `embedded`: the URL is the embedded server's (for messages)."""
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    where = server_where(url)
    connected = False
    try:
        with engine.connect() as conn:
            connected = True
            check_server(conn, where)
            if migrate.current_revision(conn) != migrate.head_revision():
                migrate.upgrade(conn)
            check_pgvector_installed(conn, where)
    except OperationalError as exc:
        lost = connection_error(exc, where) if connected or _dropped(exc) else None
        raise lost or connect_error(exc, where, embedded) from None
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if "extension" in first and "vector" in first:
            raise StoreError(
                f"could not create the pgvector extension on {where} ({first}); ask a superuser to run "
                "CREATE EXTENSION vector in this database"
            ) from None
        raise StoreError(f"database error on {where}: {first}") from None
    return engine


def _server_message(exc: BaseException) -> str:
    """The server's (or libpq's) own words from a driver error, on one line, without libpq's preamble."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    m = re.search(r"(?:FATAL|ERROR):\s+(.*)", text)
    first = m.group(1) if m else (text.splitlines()[0] if text else type(exc).__name__)
    return " ".join(first.split())[:300]


def connect_error(exc: BaseException, where: str, embedded: bool = False) -> StoreError:
    """The StoreError for a failed connection: refused credentials, or a server that is not there."""
    said = _server_message(exc)
    if re.search(r"authentication failed|password|no pg_hba.conf entry|role .* does not exist", said):
        fix = ("check the embedded server's pg_hba.conf" if embedded
               else "check the user and password in EMBEDKIT_DATABASE_URL" if os.environ.get("EMBEDKIT_DATABASE_URL")
               else "check the user and password of the database URL")
        return StoreError(f"PostgreSQL at {where} refused the credentials ({said}); {fix}")
    if not embedded:
        return StoreError(f"cannot connect to PostgreSQL at {where}: {said}; start it (e.g. `docker compose up -d`) "
                          "or unset EMBEDKIT_DATABASE_URL to use the embedded server")
    return StoreError(f"cannot connect to the embedded PostgreSQL at {where}: {said}; run `embedkit db stop`, "
                      "then the command again (the server restarts on demand)")


def _dropped(exc: BaseException) -> bool:
    """Whether a driver error says an established connection was closed by the server."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig)
    return getattr(orig, "sqlstate", None) in ("57P01", "57P02", "57P03") or any(
        s in text for s in ("closed the connection unexpectedly", "terminating connection", "connection is closed",
                            "connection is lost"))


def connection_error(exc: BaseException, where: str) -> StoreError | None:
    """The StoreError for a connection the server closed or that cannot be made anew mid-command (the server
    was stopped, crashed or restarts), or None for any other database error."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    lost = state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    if not lost:
        return None
    return StoreError(
        f"the database at {where} went away during the command ({_server_message(exc)}); what was already "
        "committed is kept (each document is written in its own transaction): run the command again to finish"
    )


def check_server(conn, where: str) -> None:
    """Refuse PostgreSQL < 13 and servers where pgvector is not available at all (or older than 0.8)."""
    num = conn.execute(text("SHOW server_version_num")).scalar_one()
    if int(num) < MIN_POSTGRES:
        raise StoreError(f"PostgreSQL at {where} is version {num}; embedkit needs PostgreSQL >= 13")
    row = conn.execute(
        text("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if row is None:
        raise StoreError(
            f"PostgreSQL at {where} has no pgvector extension; install pgvector >= 0.8 on it "
            "(or use the pgvector/pgvector image from docker-compose.yml)"
        )
    newest = row.installed_version or row.default_version
    if _version_tuple(newest) < MIN_PGVECTOR and _version_tuple(row.default_version) < MIN_PGVECTOR:
        raise StoreError(
            f"PostgreSQL at {where} has pgvector {newest}; embedkit needs pgvector >= 0.8 "
            "(install a newer pgvector, then ALTER EXTENSION vector UPDATE)"
        )
    conn.rollback()


def check_pgvector_installed(conn, where: str) -> None:
    """After migrations: the extension is installed and new enough."""
    v = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    if v is None:
        raise StoreError(
            f"pgvector is not installed in the database at {where}; run `CREATE EXTENSION vector` as a superuser"
        )
    if _version_tuple(v) < MIN_PGVECTOR:
        raise StoreError(
            f"the database at {where} has pgvector {v}; embedkit needs >= 0.8: run ALTER EXTENSION vector UPDATE"
        )
    conn.rollback()


def server_info(engine: Engine) -> ServerInfo:
    """Versions of the server, pgvector and the schema."""
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
        vec = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        return ServerInfo(postgres=pg, pgvector=vec, revision=migrate.current_revision(conn))
