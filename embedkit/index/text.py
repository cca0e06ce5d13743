"""Indexing one text without a file (the HTTP API's document POST): chunked, embedded and written exactly as
`index_paths` does a file, the document replaced in one transaction."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedkit.errors import InputError
from embedkit.index.chunk import DEFAULT_OVERLAP, chunk_text
from embedkit.index.pipeline import default_chunk_tokens, model_prefixes
from embedkit.store import Store
from embedkit.store.collections import ModelIdentity, ensure_collection, ensure_vector_indexes, has_vector_indexes
from embedkit.store.writes import ChunkRecord, DocumentRecord, write_document

MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class TextIndexed:
    """What indexing one text did."""

    document_id: int
    outcome: str  # "added" | "updated" | "unchanged"
    chunks: int


def check_key(key: str) -> None:
    """InputError for a document key that is empty, too long or has control characters."""
    if not key.strip():
        raise InputError("the document key is empty; expected a name such as 'notes/2024-05-01'")
    if len(key) > MAX_KEY_CHARS:
        raise InputError(f"the document key has {len(key)} characters; at most {MAX_KEY_CHARS} are allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InputError(f"the document key {key[:60]!r} has control characters")


def index_text(store: Store, embedder: Any, model: ModelIdentity, collection: str, key: str, text: str,
               metadata: dict[str, Any] | None = None) -> TextIndexed:
    """Store `text` as document `key` of `collection` (created for `model` if missing): chunked with the
    collection's settings, embedded, and written in one transaction. The same text as stored is not re-embedded."""
    check_key(key)
    if not text.strip():
        raise InputError("the text is empty; expected some text to index")
    if "\x00" in text:
        raise InputError("the text contains NUL characters, which PostgreSQL text cannot hold")
    data = text.encode("utf-8", "surrogatepass")
    meta = dict(metadata or {})
    # the stored hash covers the metadata too, so posting the same text with new metadata updates it
    sha = hashlib.sha256(data + b"\x00" + json.dumps(meta, sort_keys=True).encode()).hexdigest()
    with store.connect() as conn:
        info = ensure_collection(conn, collection, model, default_chunk_tokens(embedder), DEFAULT_OVERLAP,
                                 **model_prefixes(embedder, None, None))
        if not has_vector_indexes(conn, info.id):
            ensure_vector_indexes(conn, info.id, info.dim)
        old = conn.execute("SELECT id, content_sha256, n_chunks, metadata FROM documents "
                           "WHERE collection_id = %s AND md5(path) = md5(%s) AND path = %s",
                           (info.id, key, key)).fetchone()
    if old is not None and old[1] == sha:
        return TextIndexed(old[0], "unchanged", old[2])
    chunks = chunk_text(text, embedder.count_tokens, info.chunk_tokens, info.chunk_overlap)
    if not chunks:
        raise InputError("the text has no words to index")
    vecs = np.asarray(embedder.embed([info.document_prefix + c.text for c in chunks]), dtype=np.float32)
    records = [ChunkRecord(i, c.text, c.token_count, c.char_start, c.char_end) for i, c in enumerate(chunks)]
    doc = DocumentRecord(key, sha, time.time(), len(data), meta)
    with store.connect() as conn:
        outcome = write_document(conn, info.id, doc, records, vecs)
        row = conn.execute("SELECT id FROM documents WHERE collection_id = %s AND md5(path) = md5(%s) AND path = %s",
                           (info.id, key, key)).fetchone()
    return TextIndexed(row[0], outcome, len(chunks))
