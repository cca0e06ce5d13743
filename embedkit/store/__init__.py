"""The PostgreSQL+pgvector store: engine, embedded server, migrations, collections, document writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from embedkit.store.collections import CollectionInfo, ModelIdentity
from embedkit.store.engine import (
    connection_error,
    create_store_engine,
    database_url,
    normalize_url,
    psql_url,
    server_where,
)

__all__ = ["Store", "CollectionInfo", "ModelIdentity", "open_store"]


class Store:
    """A connection pool to the embedkit database, its schema upgraded to the newest migration.

    `Store()` uses EMBEDKIT_DATABASE_URL, or starts the embedded server under EMBEDKIT_HOME; searches then go
    to EMBEDKIT_DATABASE_READ_URL when it is set (a read replica). `read_url` names a replica explicitly (the
    variable applies only to the store the environment names, never to an explicit `url`).
    """

    def __init__(self, url: str | None = None, read_url: str | None = None) -> None:
        from embedkit.store.replica import read_database_url

        env_store = url is None
        embedded = env_store and not os.environ.get("EMBEDKIT_DATABASE_URL")
        self.url = url if url is not None else database_url()
        self.engine: Engine = create_store_engine(self.url, embedded=embedded)
        if read_url is not None:
            read_url = normalize_url(read_url, "read_url")
        self.read_url = read_url if read_url is not None else (read_database_url() if env_store else None)
        self._read_engine: Engine | None = None

    @property
    def psql_url(self) -> str:
        """The database URL for `psql` and other libpq clients."""
        return psql_url(self.url)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg 3 connection in autocommit mode with pgvector's types registered; group
        statements with `conn.transaction()`. A connection the server closes (or that cannot be made anew)
        mid-command is a StoreError saying so."""
        with _connect(self.engine, self.url) as conn:
            yield conn

    @contextmanager
    def connect_read(self) -> Iterator[psycopg.Connection]:
        """A connection for reads that may lag the writes (searches): to the read replica when one is
        configured, else the same as `connect()`."""
        if self.read_url is None:
            with self.connect() as conn:
                yield conn
            return
        if self._read_engine is None:
            from embedkit.store.replica import create_read_engine

            self._read_engine = create_read_engine(self.read_url)
        with _connect(self._read_engine, self.read_url) as conn:
            yield conn

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def _connect(engine: Engine, url: str) -> Iterator[psycopg.Connection]:
    """See `Store.connect`; `url` names the server in the error when the connection fails or is lost."""
    try:
        with engine.connect() as sa_conn:
            conn = sa_conn.connection.driver_connection
            sa_conn.connection.dbapi_connection.commit()
            conn.autocommit = True
            try:
                if conn.adapters.types.get("vector") is None:
                    register_vector(conn)
                yield conn
            finally:
                if not conn.closed:
                    conn.autocommit = False
    except (psycopg.OperationalError, psycopg.InterfaceError, sa_exc.OperationalError,
            sa_exc.InterfaceError) as exc:
        err = connection_error(exc, server_where(url))
        if err is None:
            raise
        raise err from None


def open_store(url: str | None = None) -> Store:
    """Open the store (see `Store`)."""
    return Store(url)
