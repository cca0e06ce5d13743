"""The incremental indexing pipeline: walk -> read and hash -> (changed files only) extract and chunk ->
embed -> write. Embedding and writing are separate steps: a batch of chunks is embedded, then each
document whose chunks are all embedded is written in its own transaction."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, TextChunk, chunk_text
from embedkit.index.extract import SkipFile, content_sha256, extract, read_file
from embedkit.index.walk import FoundFile, legacy_key, root_key, walk_paths
from embedkit.store import Store
from embedkit.store.collections import (
    ModelIdentity,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
    finish_reembed,
    has_vector_indexes,
)
from embedkit.store.writes import (
    ChunkRecord,
    DocumentRecord,
    delete_documents,
    document_hashes,
    rename_document,
    write_document,
)

DEFAULT_COLLECTION = "default"
BULK_LOAD_CHUNKS = 20_000


class IndexProgress(Protocol):
    """Callbacks the pipeline calls while it works (the CLI draws a progress bar from them)."""

    def planned(self, files: int, chunks: int) -> None: ...

    def embedded(self, chunks: int) -> None: ...  # called after each embedding batch

    def written(self, files: int) -> None: ...


@dataclass
class IndexReport:
    """What an index run did."""

    collection: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    chunks_embedded: int = 0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The `--json` object: integer counts plus the skipped files with their reasons."""
        return {
            "collection": self.collection,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": len(self.skipped),
            "chunks_embedded": self.chunks_embedded,
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "embed_seconds": round(self.embed_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
        }


@dataclass
class _Pending:
    found: FoundFile
    doc: DocumentRecord
    chunks: list[TextChunk]
    vectors: list[np.ndarray] = field(default_factory=list)


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(r == "." or path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _utf8(text: str) -> bool:
    """False for a str holding lone surrogates (undecodable bytes of a file name, as os.fsdecode keeps them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    """A file name's undecodable bytes shown as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def index_paths(
    store: Store,
    paths: Sequence[str | os.PathLike[str]],
    embedder: Any,
    model: ModelIdentity,
    collection: str = DEFAULT_COLLECTION,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    follow_symlinks: bool = False,
) -> IndexReport:
    """Index files and folders into `collection`; unchanged files (same content hash) are not re-embedded.

    With `prune`, documents under the given paths whose files are gone (or no longer indexable) are removed.
    With `reembed`, the collection is rebuilt with this model beside the old content, which stays searchable
    until the new one is complete and then replaces it at once; a run killed meanwhile resumes on the next.
    With `follow_symlinks`, links leaving the given folders are indexed too.
    """
    t0 = time.perf_counter()
    report = IndexReport(collection=collection)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(embedder)
    files = walk_paths(paths, include, exclude, follow_symlinks=follow_symlinks)
    with store.connect() as conn:
        info = ensure_collection(conn, collection, model, chunk_tokens, overlap, reembed=reembed)
        known = document_hashes(conn, info.id)
        _adopt_legacy_keys(conn, info.id, files, known)

    pending: list[_Pending] = []
    kept: set[str] = set()
    for f in files:
        if not _utf8(f.key):  # PostgreSQL text is UTF-8: such a path cannot be stored (or printed as is)
            report.skipped.append((_printable(f.key), "file name is not UTF-8"))
            continue
        if f.skip is not None:
            report.skipped.append((f.key, f.skip))
            continue
        try:
            data, mtime = read_file(f.path)
            sha = content_sha256(data)
            if known.get(f.key) == sha:
                report.unchanged += 1
                kept.add(f.key)
                continue
            ex = extract(f.path, data, mtime)
        except SkipFile as why:
            report.skipped.append((f.key, str(why)))
            continue
        chunks = chunk_text(ex.text, embedder.count_tokens, info.chunk_tokens, info.chunk_overlap)
        if not chunks:
            report.skipped.append((f.key, "no text"))
            continue
        kept.add(f.key)
        doc = DocumentRecord(f.key, ex.sha256, ex.mtime, ex.size, ex.metadata)
        pending.append(_Pending(f, doc, chunks))

    total_chunks = sum(len(p.chunks) for p in pending)
    if progress is not None:
        progress.planned(len(pending), total_chunks)
    # A first load of many chunks builds the HNSW indexes once at the end instead of maintaining them row by
    # row (several times faster). A run killed meanwhile leaves them missing; the next run restores them.
    bulk = total_chunks >= BULK_LOAD_CHUNKS and not known
    with store.connect() as conn:
        if bulk:
            drop_vector_indexes(conn, info.id)
        elif not has_vector_indexes(conn, info.id):
            ensure_vector_indexes(conn, info.id, info.dim)
    try:
        _embed_and_write(store, info.id, pending, embedder, batch_size, report, progress)
    finally:
        if bulk:
            with store.connect() as conn:
                ensure_vector_indexes(conn, info.id, info.dim)

    if report.chunks_embedded:
        with store.connect() as conn:
            # fresh statistics let the planner pick the HNSW index for the next searches
            conn.execute("ANALYZE documents, chunks")
    if prune:
        roots = [root_key(p) for p in paths]
        gone = [k for k in known if k not in kept and _under(k, roots)]
        with store.connect() as conn:
            report.removed = delete_documents(conn, info.id, gone)
    if reembed:
        with store.connect() as conn:
            finish_reembed(conn, info)
    report.total_seconds = time.perf_counter() - t0
    return report


def _adopt_legacy_keys(conn, collection_id: int, files: Sequence[FoundFile], known: dict[str, str]) -> None:
    """Documents that earlier versions stored under an absolute spelling of a path now keyed relative to the
    current folder are renamed to the new key (same content, nothing re-embedded), so no file gets two."""
    for f in files:
        if f.key in known or not _utf8(f.key):
            continue
        old = legacy_key(f.key)
        if old is not None and old in known:
            rename_document(conn, collection_id, old, f.key)
            known[f.key] = known.pop(old)


def default_chunk_tokens(embedder: Any) -> int:
    """Chunk size: DEFAULT_CHUNK_TOKENS, or less when the model's window is smaller (room for CLS/SEP)."""
    limit = getattr(embedder, "max_tokens", None)
    return min(DEFAULT_CHUNK_TOKENS, int(limit) - 4) if limit else DEFAULT_CHUNK_TOKENS


def _embed_and_write(store, collection_id, pending, embedder, batch_size, report, progress) -> None:
    group = max(batch_size * 4, 8)
    flat = [(i, c) for i, p in enumerate(pending) for c in p.chunks]
    next_doc = 0
    with store.connect() as conn:
        for s in range(0, len(flat), group):
            part = flat[s : s + group]
            t = time.perf_counter()
            tick = progress.embedded if progress is not None else None
            vecs = np.asarray(embedder.embed([c.text for _, c in part], batch_size=batch_size, progress=tick),
                              dtype=np.float32)
            report.embed_seconds += time.perf_counter() - t
            report.chunks_embedded += len(part)
            for (i, _), v in zip(part, vecs, strict=True):
                pending[i].vectors.append(v)
            t = time.perf_counter()
            while next_doc < len(pending) and len(pending[next_doc].vectors) == len(pending[next_doc].chunks):
                _write(conn, collection_id, pending[next_doc], report)
                pending[next_doc] = None  # free the text and vectors of written documents
                next_doc += 1
                if progress is not None:
                    progress.written(1)
            report.write_seconds += time.perf_counter() - t


def _write(conn, collection_id: int, p: _Pending, report: IndexReport) -> None:
    records = [
        ChunkRecord(i, c.text, c.token_count, c.char_start, c.char_end) for i, c in enumerate(p.chunks)
    ]
    outcome = write_document(conn, collection_id, p.doc, records, np.stack(p.vectors))
    if outcome == "added":
        report.added += 1
    elif outcome == "updated":
        report.updated += 1
    else:
        report.unchanged += 1
