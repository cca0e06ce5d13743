"""Read scaling: searches go to a read replica (EMBEDKIT_DATABASE_READ_URL) while writes stay on the primary.

The replica (a streaming-replication standby, or any server holding the same data) is never migrated: it
must already be at the schema revision this embedkit expects, which a standby of an up-to-date primary is.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, OperationalError

from embedkit.errors import StoreError
from embedkit.store import migrate
from embedkit.store.engine import check_pgvector_installed, check_server, normalize_url, server_where

READ_URL_ENV = "EMBEDKIT_DATABASE_READ_URL"


def read_database_url() -> str | None:
    """EMBEDKIT_DATABASE_READ_URL as a psycopg 3 URL, or None when unset."""
    env = os.environ.get(READ_URL_ENV, "").strip()
    return normalize_url(env, READ_URL_ENV) if env else None


def create_read_engine(url: str) -> Engine:
    """An engine for the replica at `url`, checked for reachability, pgvector and the schema revision."""
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    where = server_where(url)
    try:
        with engine.connect() as conn:
            check_server(conn, where)
            check_pgvector_installed(conn, where)
            have, want = migrate.current_revision(conn), migrate.head_revision()
            if have != want:
                raise StoreError(
                    f"the read replica at {where} ({READ_URL_ENV}) has schema revision {have}, not {want}; "
                    "wait for it to replay the primary's migrations, or unset the variable"
                )
    except (OperationalError, DBAPIError) as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"cannot use the read replica at {where} ({READ_URL_ENV}): {first}") from None
    return engine
