"""Reading documents back: a page of a collection's documents, and one document with its chunks in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True)
class StoredDocument:
    """A document row (without its vector)."""

    document_id: int
    key: str  # a file's canonical path, or the key it was stored under (see embedkit.index.keys)
    n_chunks: int
    metadata: dict[str, Any]
    content_sha256: str
    mtime: float
    size: int
    is_file: bool = False  # the key is a file's path

    def to_json(self) -> dict[str, Any]:
        """The document as a JSON object."""
        return {"document_id": self.document_id, "key": self.key, "n_chunks": self.n_chunks,
                "metadata": self.metadata, "content_sha256": self.content_sha256, "mtime": self.mtime,
                "size": self.size}


@dataclass(frozen=True)
class StoredChunk:
    """A chunk row (without its vector)."""

    chunk_id: int
    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int

    def to_json(self) -> dict[str, Any]:
        """The chunk as a JSON object."""
        return {"chunk_id": self.chunk_id, "ordinal": self.ordinal, "text": self.text,
                "char_start": self.char_start, "char_end": self.char_end, "token_count": self.token_count}


_DOC_COLUMNS = "id, path, n_chunks, metadata, content_sha256, mtime, size, is_file"


def _doc(row) -> StoredDocument:
    return StoredDocument(row[0], row[1], row[2], row[3] or {}, row[4], float(row[5]), int(row[6]), row[7])


def get_document(conn: psycopg.Connection, collection_id: int, key: str | None = None,
                 document_id: int | None = None) -> StoredDocument | None:
    """The document with this key (or id) in a collection, or None."""
    if key is not None:
        row = conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE collection_id = %s AND path = %s",
                           (collection_id, key)).fetchone()
    else:
        row = conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE collection_id = %s AND id = %s",
                           (collection_id, document_id)).fetchone()
    return _doc(row) if row else None


def document_chunks(conn: psycopg.Connection, collection_id: int, document_id: int) -> list[StoredChunk]:
    """A document's chunks in order."""
    rows = conn.execute(
        "SELECT id, ordinal, text, char_start, char_end, token_count FROM chunks "
        "WHERE collection_id = %s AND document_id = %s ORDER BY ordinal",
        (collection_id, document_id),
    ).fetchall()
    return [StoredChunk(*r) for r in rows]


def list_documents(conn: psycopg.Connection, collection_id: int, limit: int = 100,
                   offset: int = 0) -> list[StoredDocument]:
    """A page of a collection's documents, by key."""
    rows = conn.execute(
        f"SELECT {_DOC_COLUMNS} FROM documents WHERE collection_id = %s ORDER BY path LIMIT %s OFFSET %s",
        (collection_id, limit, offset),
    ).fetchall()
    return [_doc(r) for r in rows]


def chunk_exists(conn: psycopg.Connection, collection_id: int, chunk_id: int) -> bool:
    """Whether a chunk id belongs to a collection."""
    row = conn.execute("SELECT 1 FROM chunks WHERE collection_id = %s AND id = %s",
                       (collection_id, chunk_id)).fetchone()
    return row is not None
