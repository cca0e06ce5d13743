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
from embedkit.store.engine import connection_error, create_store_engine, database_url, psql_url, server_where

__all__ = ["Store", "CollectionInfo", "ModelIdentity", "open_store"]


class Store:
    """A connection pool to the embedkit database, its schema upgraded to the newest migration.

    `Store()` uses EMBEDKIT_DATABASE_URL, or starts the embedded server under EMBEDKIT_HOME.
    """

    def __init__(self, url: str | None = None) -> None:
        embedded = url is None and not os.environ.get("EMBEDKIT_DATABASE_URL")
        self.url = url if url is not None else database_url()
        self.engine: Engine = create_store_engine(self.url, embedded=embedded)

    @property
    def psql_url(self) -> str:
        """The database URL for `psql` and other libpq clients."""
        return psql_url(self.url)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg 3 connection in autocommit mode with pgvector's types registered; group
        statements with `conn.transaction()`. A connection the server closes (or that cannot be made anew)
        mid-command is a StoreError saying so."""
        try:
            with self.engine.connect() as sa_conn:
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
            err = connection_error(exc, server_where(self.url))
            if err is None:
                raise
            raise err from None

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(url: str | None = None) -> Store:
    """Open the store (see `Store`)."""
    return Store(url)
