"""Writing documents: one transaction per document, chunks loaded with one binary COPY, serialised per
collection through a transaction-scoped advisory lock (so two indexers never interleave one document)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

# Namespace of the per-collection write lock: pg_advisory_xact_lock(_WRITE_LOCK_NS, collection_id).
_WRITE_LOCK_NS = 0x656B


@dataclass
class ChunkRecord:
    """One chunk to store; `char_start:char_end` indexes the document's extracted text."""

    ordinal: int
    text: str
    token_count: int
    char_start: int
    char_end: int


@dataclass
class DocumentRecord:
    """One document to store, identified within its collection by `path` (its key); `is_file`: the key is a
    file's canonical path (see `embedkit.index.keys`), not a key given verbatim."""

    path: str
    content_sha256: str
    mtime: float
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    is_file: bool = False


def document_hashes(conn: psycopg.Connection, collection_id: int) -> dict[str, str]:
    """path -> content sha256 of every document in a collection."""
    rows = conn.execute(
        "SELECT path, content_sha256 FROM documents WHERE collection_id = %s", (collection_id,)
    ).fetchall()
    return dict(rows)


def file_document_keys(conn: psycopg.Connection, collection_id: int) -> set[str]:
    """The keys of a collection's documents that are files (not texts stored under a key)."""
    rows = conn.execute("SELECT path FROM documents WHERE collection_id = %s AND is_file", (collection_id,))
    return {r[0] for r in rows}


def mean_vector(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean of a document's chunk vectors (its vector for `similar`)."""
    m = embeddings.astype(np.float64).mean(axis=0)
    n = np.linalg.norm(m)
    return (m / n if n > 0 else m).astype(np.float32)


def write_document(
    conn: psycopg.Connection,
    collection_id: int,
    doc: DocumentRecord,
    chunks: Sequence[ChunkRecord],
    embeddings: np.ndarray,
) -> str:
    """Replace (or add) one document and its chunks in one transaction.

    Returns "added", "updated", or "unchanged" when another indexer already stored this exact content.
    """
    if len(chunks) != len(embeddings):
        raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings for {doc.path}")
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK_NS, collection_id))
        old = conn.execute(
            "SELECT id, content_sha256 FROM documents WHERE collection_id = %s AND md5(path) = md5(%s) "
            "AND path = %s", (collection_id, doc.path, doc.path),
        ).fetchone()
        if old is not None and old[1] == doc.content_sha256:
            return "unchanged"
        if old is not None:
            conn.execute("DELETE FROM documents WHERE collection_id = %s AND id = %s", (collection_id, old[0]))
        doc_vec = mean_vector(emb) if len(emb) else None
        doc_id = conn.execute(
            "INSERT INTO documents (collection_id, path, content_sha256, mtime, size, metadata, n_chunks, embedding, "
            "is_file) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (collection_id, doc.path, doc.content_sha256, doc.mtime, doc.size, json.dumps(doc.metadata),
             len(chunks), doc_vec, doc.is_file),
        ).fetchone()[0]
        if chunks:
            _copy_chunks(conn, collection_id, doc_id, chunks, emb)
    return "added" if old is None else "updated"


def _copy_chunks(conn, collection_id: int, doc_id: int, chunks: Sequence[ChunkRecord], emb: np.ndarray) -> None:
    with conn.cursor() as cur:
        with cur.copy(
            "COPY chunks (collection_id, document_id, ordinal, text, token_count, char_start, char_end, embedding) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "int4", "text", "int4", "int4", "int4", "vector"])
            for c, v in zip(chunks, emb, strict=True):
                # Postgres text cannot hold NUL; extraction already rejects binary files, this is a last guard.
                copy.write_row(
                    (collection_id, doc_id, c.ordinal, c.text.replace("\x00", ""), c.token_count, c.char_start,
                     c.char_end, v)
                )


def rekey_file_document(conn: psycopg.Connection, collection_id: int, old: str, new: str) -> None:
    """Store the file document keyed `old` under the key `new` (its chunks and vectors unchanged)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK_NS, collection_id))
        conn.execute("UPDATE documents SET path = %s, is_file = true WHERE collection_id = %s AND md5(path) = md5(%s) "
                     "AND path = %s", (new, collection_id, old, old))


def delete_documents(conn: psycopg.Connection, collection_id: int, paths: Iterable[str]) -> int:
    """Remove documents (and their chunks) by path; returns how many were removed."""
    paths = list(paths)
    if not paths:
        return 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK_NS, collection_id))
        cur = conn.execute(
            "DELETE FROM documents WHERE collection_id = %s AND path = ANY(%s)", (collection_id, paths)
        )
        return cur.rowcount
