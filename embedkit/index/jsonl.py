"""Indexing documents given as JSON lines instead of files: one object per line with an `_id`, a `text` and
an optional `title` (the BEIR `corpus.jsonl` format). Each becomes a document stored under its `_id` as path,
so search results and `embedkit eval` name documents by their ids. Incremental like file indexing: a
document whose title and text are unchanged is not re-embedded."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.errors import InputError
from embedkit.index.chunk import DEFAULT_OVERLAP, chunk_text
from embedkit.index.extract import content_sha256
from embedkit.index.pipeline import (
    BULK_LOAD_CHUNKS,
    DEFAULT_COLLECTION,
    IndexProgress,
    IndexReport,
    _embed_and_write,
    _Pending,
    default_chunk_tokens,
    model_prefixes,
)
from embedkit.store import Store
from embedkit.store.collections import (
    ModelIdentity,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
    has_vector_indexes,
)
from embedkit.store.writes import DocumentRecord, delete_documents, document_hashes


@dataclass(frozen=True)
class JsonlDocument:
    """One line of a corpus file."""

    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What is chunked and embedded: the title, a blank line, then the text (as BEIR's dense baselines
        join them)."""
        return f"{self.title}\n\n{self.text}" if self.title.strip() else self.text


def read_jsonl_documents(path: str | os.PathLike[str]) -> Iterator[JsonlDocument]:
    """The documents of a JSON-lines corpus file; a line that is not an object with a string `_id` and `text`
    is an InputError naming the line."""
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text; expected one JSON object per line") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("_id"), str | int) or not isinstance(
                    obj.get("text"), str):
                raise InputError(f'{path}:{n}: expected an object with "_id" and "text" (and optional "title")')
            title = obj.get("title") or ""
            yield JsonlDocument(str(obj["_id"]), title if isinstance(title, str) else str(title), obj["text"])


def index_jsonl_documents(
    store: Store,
    path: str | os.PathLike[str],
    embedder: Any,
    model: ModelIdentity,
    collection: str = DEFAULT_COLLECTION,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> IndexReport:
    """Index the documents of a JSON-lines corpus into `collection`, each under its `_id`. With `prune`,
    documents of the collection absent from the file are removed."""
    t0 = time.perf_counter()
    report = IndexReport(collection=collection)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(embedder)
    with store.connect() as conn:
        info = ensure_collection(conn, collection, model, chunk_tokens, overlap, reembed=reembed,
                                 **model_prefixes(embedder, query_prefix, document_prefix))
        known = document_hashes(conn, info.id)
    pending: list[_Pending] = []
    seen: set[str] = set()
    for doc in read_jsonl_documents(path):
        if doc.doc_id in seen:
            report.skipped.append((doc.doc_id, "duplicate _id"))
            continue
        seen.add(doc.doc_id)
        text = doc.full_text.replace("\x00", "")
        data = text.encode("utf-8", "surrogatepass")
        sha = content_sha256(data)
        if known.get(doc.doc_id) == sha:
            report.unchanged += 1
            continue
        chunks = chunk_text(text, embedder.count_tokens, info.chunk_tokens, info.chunk_overlap)
        if not chunks:
            report.skipped.append((doc.doc_id, "no text"))
            continue
        record = DocumentRecord(doc.doc_id, sha, 0.0, len(data), {"title": doc.title} if doc.title else {})
        pending.append(_Pending(None, record, chunks))
    total_chunks = sum(len(p.chunks) for p in pending)
    if progress is not None:
        progress.planned(len(pending), total_chunks)
    bulk = total_chunks >= BULK_LOAD_CHUNKS and not known
    with store.connect() as conn:
        if bulk:
            drop_vector_indexes(conn, info.id)
        elif not has_vector_indexes(conn, info.id):
            ensure_vector_indexes(conn, info.id, info.dim)
    try:
        _embed_and_write(store, info.id, pending, embedder, batch_size, report, progress, info.document_prefix)
    finally:
        if bulk:
            with store.connect() as conn:
                ensure_vector_indexes(conn, info.id, info.dim)
    if report.chunks_embedded:
        with store.connect() as conn:
            conn.execute("ANALYZE documents, chunks")
            conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin'::regclass)")
    if prune:
        with store.connect() as conn:
            report.removed = delete_documents(conn, info.id, [k for k in known if k not in seen])
    report.total_seconds = time.perf_counter() - t0
    return report
