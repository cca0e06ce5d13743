"""Store: migrations, collections and their model identity, indexes per dimension, atomic writes,
clear errors for unreachable servers and missing pgvector. Runs on the session's embedded PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import psycopg
import pytest
from store_fixtures import *  # noqa: F403

from embedkit.errors import CollectionMismatchError, StoreError
from embedkit.store import Store, migrate
from embedkit.store.collections import (
    ModelIdentity,
    drop_collection,
    ensure_collection,
    finish_reembed,
    get_collection,
)
from embedkit.store.engine import check_server, normalize_url, psql_url
from embedkit.store.writes import ChunkRecord, DocumentRecord, document_hashes, write_document

MODEL = ModelIdentity("m", "m.gguf", "a" * 64, "bert", 8, "mean", True)


def test_schema_at_head_and_pgvector(store):
    with store.engine.connect() as conn:
        head = migrate.head_revision()
        assert head is not None and migrate.current_revision(conn) == head
    with store.connect() as conn:
        v = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        assert tuple(int(x) for x in v.split(".")[:2]) >= (0, 8)
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"collections", "documents", "chunks", "alembic_version", "keyword_stats", "keyword_terms"} <= tables
    # a second upgrade is a no-op
    with store.engine.connect() as conn:
        migrate.upgrade(conn)
        assert migrate.current_revision(conn) == head


@pytest.mark.parametrize("dim,kind,opclass", [(8, "vector", "vector_cosine_ops"),
                                              (2500, "halfvec", "halfvec_cosine_ops"),
                                              (5120, "bit", "bit_hamming_ops")])
def test_index_per_dimension(store, fresh_collection, dim, kind, opclass):
    model = dataclasses.replace(MODEL, dim=dim)
    with store.connect() as conn:
        info = ensure_collection(conn, fresh_collection, model, 100, 10)
        assert info.index_kind == kind
        defs = [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname IN (%s, %s)",
            (f"chunks_hnsw_c{info.id}", f"documents_hnsw_c{info.id}"))]
        assert len(defs) == 2 and all(opclass in d and f"collection_id = {info.id}" in d for d in defs)
        drop_collection(conn, fresh_collection)
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                            (f"chunks_hnsw_c{info.id}",)).fetchone()[0] == 0


def test_model_mismatch_refused_unless_reembed(store, fresh_collection):
    rng = np.random.default_rng(5)
    with store.connect() as conn:
        info = ensure_collection(conn, fresh_collection, MODEL, 100, 10)
        doc = DocumentRecord("a.txt", "h1", 0.0, 3, {})
        write_document(conn, info.id, doc, [ChunkRecord(0, "abc", 1, 0, 3)], rng.standard_normal((1, 8)))
        other = dataclasses.replace(MODEL, model_sha256="b" * 64, model_file="other.gguf")
        with pytest.raises(CollectionMismatchError, match="other.gguf"):
            ensure_collection(conn, fresh_collection, other, 100, 10)
        with pytest.raises(CollectionMismatchError, match="dim"):
            ensure_collection(conn, fresh_collection, dataclasses.replace(MODEL, dim=16), 100, 10)
        again = ensure_collection(conn, fresh_collection, other, 100, 10, reembed=True)
        assert again.model.model_file == "other.gguf"
        assert again.id != info.id  # a new row: old, not yet vacuumed chunks never meet the new index
        # the old content stays, searchable, until the re-embedding is complete and swapped in
        assert document_hashes(conn, info.id) == {"a.txt": "h1"} and document_hashes(conn, again.id) == {}
        assert get_collection(conn, fresh_collection).model == MODEL
        assert ensure_collection(conn, fresh_collection, other, 100, 10, reembed=True).id == again.id  # resumed
        done = finish_reembed(conn, again)
        assert done.name == fresh_collection and done.id == again.id
        assert document_hashes(conn, info.id) == {}
        assert get_collection(conn, fresh_collection).model == other


def test_write_document_is_atomic_and_replaces(store, fresh_collection):
    rng = np.random.default_rng(7)
    with store.connect() as conn:
        info = ensure_collection(conn, fresh_collection, MODEL, 100, 10)
        chunks = [ChunkRecord(i, f"text {i}", 2, i * 7, i * 7 + 6) for i in range(3)]
        assert write_document(conn, info.id, DocumentRecord("d.md", "h1", 1.0, 10), chunks,
                              rng.standard_normal((3, 8))) == "added"
        assert write_document(conn, info.id, DocumentRecord("d.md", "h1", 1.0, 10), chunks,
                              rng.standard_normal((3, 8))) == "unchanged"
        # a failure inside the transaction (embedding of the wrong dimension for the index) leaves the old version
        with pytest.raises(psycopg.errors.DataException):
            write_document(conn, info.id, DocumentRecord("d.md", "h2", 1.0, 10), chunks[:2],
                           rng.standard_normal((2, 5)))
        assert document_hashes(conn, info.id) == {"d.md": "h1"}
        assert conn.execute("SELECT count(*) FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()[0] == 3
        assert write_document(conn, info.id, DocumentRecord("d.md", "h2", 1.0, 10), chunks[:2],
                              rng.standard_normal((2, 8))) == "updated"
        rows = conn.execute("SELECT ordinal, text FROM chunks WHERE collection_id = %s ORDER BY ordinal",
                            (info.id,)).fetchall()
        assert rows == [(0, "text 0"), (1, "text 1")]
        # the document vector is the normalised mean of its chunks
        vec = np.asarray(conn.execute("SELECT embedding FROM documents WHERE collection_id = %s",
                                      (info.id,)).fetchone()[0].to_numpy())
        assert abs(np.linalg.norm(vec) - 1) < 1e-5


def test_unreachable_server_is_one_line(tmp_path):
    url = f"postgresql+psycopg://nobody@/nodb?host={tmp_path}&port=1"
    with pytest.raises(StoreError) as err:
        Store(url)
    msg = str(err.value)
    assert "\n" not in msg and "cannot connect to PostgreSQL" in msg and "docker compose up -d" in msg


def test_psql_url():
    assert psql_url("postgresql+psycopg://postgres:@/postgres?host=/tmp/a b") == \
        "postgresql://postgres@/postgres?host=/tmp/a b"
    assert psql_url("postgresql+psycopg://u:p%40x@h:5432/db?sslmode=require") == \
        "postgresql://u:p%40x@h:5432/db?sslmode=require"


def test_url_normalisation():
    assert normalize_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(StoreError, match="PostgreSQL URL"):
        normalize_url("mysql://u@h/db")


class _FakeConn:
    """Answers check_server's two queries like a server without pgvector, or with an old one."""

    def __init__(self, ext_row):
        self.ext_row = ext_row

    def execute(self, sql):
        rows = {"SHOW": [("170000",)], "SELECT": [self.ext_row] if self.ext_row else []}
        kind = "SHOW" if str(sql).startswith("SHOW") else "SELECT"
        return _Result(rows[kind])

    def rollback(self):
        pass


class _Result:
    def __init__(self, rows):
        self.rows = rows

    def scalar_one(self):
        return self.rows[0][0]

    def first(self):
        if not self.rows:
            return None
        return type("Row", (), {"default_version": self.rows[0][0], "installed_version": self.rows[0][1]})()


def test_missing_or_old_pgvector_messages():
    with pytest.raises(StoreError, match="no pgvector extension; install pgvector >= 0.8"):
        check_server(_FakeConn(None), "db.example")
    with pytest.raises(StoreError, match="pgvector 0.7.4; embedkit needs pgvector >= 0.8"):
        check_server(_FakeConn(("0.7.4", "0.7.4")), "db.example")
    check_server(_FakeConn(("0.8.1", None)), "db.example")  # available and new enough: fine


def test_missing_extension_without_privilege_is_one_line(store):
    from sqlalchemy import make_url

    with store.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS ek_plain_db")
        conn.execute("DROP ROLE IF EXISTS ek_plain")
        conn.execute("CREATE ROLE ek_plain LOGIN")
        conn.execute("CREATE DATABASE ek_plain_db OWNER ek_plain")
    url = make_url(store.url).set(username="ek_plain", database="ek_plain_db").render_as_string(hide_password=False)
    with pytest.raises(StoreError) as err:
        Store(url)
    msg = str(err.value)
    assert "\n" not in msg and "ask a superuser to run CREATE EXTENSION vector" in msg
    with store.connect() as conn:
        conn.execute("DROP DATABASE ek_plain_db WITH (FORCE)")
        conn.execute("DROP ROLE ek_plain")


def test_migration_to_path_hash_keeps_existing_documents(store):
    """0002_path_hash swaps UNIQUE (collection_id, path) for a unique md5(path) index: documents stored at 0001
    stay, stay unique, and a path beyond the b-tree limit (about 2,700 bytes) can then be stored."""
    from sqlalchemy import make_url

    name = "embedkit_migration_test"
    with store.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = make_url(store.url).set(database=name).render_as_string(hide_password=False)
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn, "0001")
            assert migrate.current_revision(conn) == "0001"
        old = Store(url)  # upgrades to head on open
        try:
            rng = np.random.default_rng(11)
            with old.connect() as conn:
                assert migrate.head_revision() != "0001"
                info = ensure_collection(conn, "old", MODEL, 100, 10)
                write_document(conn, info.id, DocumentRecord("a.md", "h1", 0.0, 3), [ChunkRecord(0, "abc", 1, 0, 3)],
                               rng.standard_normal((1, 8)))
            with engine.connect() as conn:  # back to 0001 with a document in place, then up again
                migrate.upgrade(conn, "head")
                from alembic import command

                command.downgrade(migrate.alembic_config(conn), "0001")
                conn.commit()
                assert migrate.current_revision(conn) == "0001"
                migrate.upgrade(conn)
                assert migrate.current_revision(conn) == migrate.head_revision()
            with old.connect() as conn:
                assert document_hashes(conn, info.id) == {"a.md": "h1"}
                assert write_document(conn, info.id, DocumentRecord("a.md", "h1", 0.0, 3),
                                      [ChunkRecord(0, "abc", 1, 0, 3)], rng.standard_normal((1, 8))) == "unchanged"
                with pytest.raises(psycopg.errors.UniqueViolation):
                    conn.execute("INSERT INTO documents (collection_id, path, content_sha256, mtime, size, n_chunks) "
                                 "VALUES (%s, 'a.md', 'x', 0, 0, 0)", (info.id,))
                long = "/".join(rng.bytes(100).hex() for _ in range(20))  # 4,019 incompressible bytes
                assert write_document(conn, info.id, DocumentRecord(long, "h2", 0.0, 3),
                                      [ChunkRecord(0, "abc", 1, 0, 3)], rng.standard_normal((1, 8))) == "added"
                assert set(document_hashes(conn, info.id)) == {"a.md", long}
        finally:
            old.close()
    finally:
        engine.dispose()
        with store.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_migration_to_file_keys_marks_files_and_keeps_keys(store):
    """0004_file_keys adds documents.is_file: rows of files (a real mtime) are marked, texts (mtime 0) are not,
    and every key stays as it was; down and up again keeps the rows."""
    from alembic import command
    from sqlalchemy import create_engine, make_url

    name = "embedkit_migration_file_keys"
    with store.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = make_url(store.url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn, "0003_keyword_bm25")
            cid = conn.exec_driver_sql(
                "INSERT INTO collections (name, model_name, model_file, model_sha256, architecture, dim, pooling, "
                "normalize, chunk_tokens, chunk_overlap) VALUES ('old', 'm', 'm.gguf', 'x', 'bert', 8, 'mean', "
                "true, 100, 10) RETURNING id").scalar()
            for key, mtime in [("docs/a.md", 1765000000.0), ("corpus-id-7", 0.0)]:
                conn.exec_driver_sql("INSERT INTO documents (collection_id, path, content_sha256, mtime, size, "
                                     "n_chunks) VALUES (%s, %s, 'h', %s, 1, 0)", (cid, key, mtime))
            conn.commit()
            migrate.upgrade(conn, "head")
            rows = conn.exec_driver_sql("SELECT path, is_file FROM documents ORDER BY path").fetchall()
            assert [tuple(r) for r in rows] == [("corpus-id-7", False), ("docs/a.md", True)]
            command.downgrade(migrate.alembic_config(conn), "0003_keyword_bm25")
            conn.commit()
            migrate.upgrade(conn, "head")
            assert conn.exec_driver_sql("SELECT count(*) FROM documents WHERE is_file").scalar() == 1
    finally:
        engine.dispose()
        with store.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
