"""The memory of an HNSW build: embedkit raises maintenance_work_mem to its floor for the build, and keeps a
larger setting made on the server (a build that outgrows its memory finishes on disk several times slower)."""

from __future__ import annotations

from store_fixtures import *  # noqa: F403

from embedkit.store.collections import (
    ModelIdentity,
    drop_collection,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
    has_vector_indexes,
)


def _build_memory(store, name: str, session_setting: str) -> str:
    """maintenance_work_mem in effect right after ensure_vector_indexes, inside the same outer transaction."""
    model = ModelIdentity("m", "m.gguf", "sha-mem", "bert", 8, "mean", True)
    with store.connect() as conn:
        info = ensure_collection(conn, name, model, 200, 0)
        drop_vector_indexes(conn, info.id)
        with conn.transaction():
            conn.execute(f"SET LOCAL maintenance_work_mem = '{session_setting}'")
            ensure_vector_indexes(conn, info.id, info.dim)
            used = conn.execute("SHOW maintenance_work_mem").fetchone()[0]
        assert has_vector_indexes(conn, info.id)
        drop_collection(conn, name)
    return used


def test_build_memory_is_raised_to_the_floor(store, fresh_collection):
    assert _build_memory(store, fresh_collection, "64MB") == "512MB"


def test_larger_server_setting_is_kept(store, fresh_collection):
    assert _build_memory(store, fresh_collection, "1GB") == "1GB"
