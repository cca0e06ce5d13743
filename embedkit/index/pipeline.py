"""The incremental indexing pipeline: walk -> read and hash -> (changed files only) extract and chunk ->
embed -> write. Embedding and writing are separate steps: a batch of chunks is embedded, then each
document whose chunks are all embedded is written in its own transaction."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedkit.errors import InputError
from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, TextChunk, chunk_text
from embedkit.index.extract import SkipFile, content_sha256, extract, read_file
from embedkit.index.keys import file_key, legacy_file_key, legacy_keys, shown_path
from embedkit.index.walk import FoundFile, walk_paths
from embedkit.store import Store
from embedkit.store.collections import (
    CollectionInfo,
    ModelIdentity,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
    finish_reembed,
    has_vector_indexes,
    is_staging,
)
from embedkit.store.writes import (
    ChunkRecord,
    DocumentRecord,
    delete_documents,
    document_hashes,
    file_document_keys,
    rekey_file_document,
    write_document,
)

DEFAULT_COLLECTION = "default"
BULK_LOAD_CHUNKS = 20_000


class IndexProgress(Protocol):
    """Callbacks the pipeline calls while it works (the CLI draws a progress bar from them)."""

    def planned(self, files: int | None, chunks: int | None) -> None: ...  # None: not known in advance

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
    doc: DocumentRecord
    chunks: list[TextChunk]
    vectors: list[np.ndarray] = field(default_factory=list)


@dataclass
class DocumentText:
    """A changed document on its way to the embedder: what is stored about it, and its extracted text."""

    doc: DocumentRecord
    text: str


class Executor(Protocol):
    """Runs the chunk-embed-write step somewhere else (`embedkit.index.ray_executor.RayExecutor`)."""

    def run(self, store: Store, info: CollectionInfo, embedder: Any, documents: Iterable[DocumentText],
            total: int | None, report: IndexReport, progress: IndexProgress | None) -> set[str]:
        """Chunk, embed and write `documents` (each in one transaction); returns the keys written."""
        ...


def _under(key: str, roots: Sequence[str]) -> bool:
    return any(key == r or key.startswith(r.rstrip("/") + "/") for r in roots)


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
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    executor: Executor | None = None,
    follow_symlinks: bool = False,
) -> IndexReport:
    """Index files and folders into `collection`; unchanged files (same content hash) are not re-embedded.

    The changed files are chunked, embedded and written here, or by `executor` (e.g. on a Ray cluster).

    With `prune`, documents under the given paths whose files are gone (or no longer indexable) are removed.
    With `reembed`, the collection is rebuilt with this model beside the old content, which stays searchable
    until the new one is complete and then replaces it at once; a run killed meanwhile resumes on the next.
    With `follow_symlinks`, links leaving the given folders are indexed too.
    A new collection records the query and document prefixes given, else the model's (see `model_prefixes`).
    """
    t0 = time.perf_counter()
    report = IndexReport(collection=collection)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(embedder)
    files = walk_paths(paths, include, exclude, follow_symlinks=follow_symlinks)
    with store.connect() as conn:
        info = ensure_collection(conn, collection, model, chunk_tokens, overlap, reembed=reembed,
                                 **model_prefixes(embedder, query_prefix, document_prefix))
        known = document_hashes(conn, info.id)
        file_keys = file_document_keys(conn, info.id)
        _adopt_legacy_keys(conn, info.id, files, known, file_keys)

    kept: set[str] = set()
    if executor is None:
        pending: list[_Pending] = []
        for f, data, mtime in _scan(files, known, report, kept):
            doc = _extract(f, data, mtime, report)
            if doc is None:
                continue
            p = _chunk(doc, embedder, info, report)
            if p is not None:
                kept.add(f.key)
                pending.append(p)
        total_chunks = sum(len(p.chunks) for p in pending)
        if progress is not None:
            progress.planned(len(pending), total_chunks)
        with _vector_indexes(store, info, bulk=total_chunks >= BULK_LOAD_CHUNKS and not known):
            _embed_and_write(store, info.id, pending, embedder, batch_size, report, progress, info.document_prefix)
    else:
        # The file list is kept (paths only), the texts are read again one bounded batch at a time.
        changed = [(f, len(data)) for f, data, _ in _scan(files, known, report, kept)]
        est_chunks = sum(n for _, n in changed) // (_CHARS_PER_TOKEN * max(8, info.chunk_tokens - info.chunk_overlap))
        with _vector_indexes(store, info, bulk=est_chunks >= BULK_LOAD_CHUNKS and not known):
            kept |= executor.run(store, info, embedder, _read_changed(changed, report), len(changed), report,
                                 progress)

    roots = [file_key(p) for p in paths]
    gone = [k for k in known if k not in kept and k in file_keys and _under(legacy_file_key(k), roots)]
    _finish(store, info, report, gone if prune else [])
    report.total_seconds = time.perf_counter() - t0
    return report


# Rough characters per token of English text, to guess a run's chunk count before chunking it remotely.
_CHARS_PER_TOKEN = 4


def _scan(files: Sequence[FoundFile], known: dict[str, str], report: IndexReport,
          kept: set[str]) -> Iterator[tuple[FoundFile, bytes, float]]:
    """Read and hash each file; yields the ones whose content differs from the stored one (with their bytes
    and mtime), counts the unchanged ones in `report` and `kept`, and records the unreadable ones as skipped."""
    for f in files:
        if not _utf8(f.key):  # PostgreSQL text is UTF-8: such a path cannot be stored (or printed as is)
            report.skipped.append((_printable(shown_path(f.key)), "file name is not UTF-8"))
            continue
        if f.skip is not None:
            report.skipped.append((shown_path(f.key), f.skip))
            continue
        try:
            data, mtime = read_file(f.path)
        except SkipFile as why:
            report.skipped.append((shown_path(f.key), str(why)))
            continue
        if known.get(f.key) == content_sha256(data):
            report.unchanged += 1
            kept.add(f.key)
            continue
        yield f, data, mtime


def _extract(f: FoundFile, data: bytes, mtime: float, report: IndexReport) -> DocumentText | None:
    """The document and text of a changed file, or None (recorded as skipped) when it has no usable text."""
    try:
        ex = extract(f.path, data, mtime)
    except SkipFile as why:
        report.skipped.append((shown_path(f.key), str(why)))
        return None
    return DocumentText(DocumentRecord(f.key, ex.sha256, ex.mtime, ex.size, ex.metadata, is_file=True), ex.text)


def _read_changed(changed: Sequence[tuple[FoundFile, int]], report: IndexReport) -> Iterator[DocumentText]:
    """The changed files' documents, read and extracted one at a time as the consumer asks for them."""
    for f, _ in changed:
        try:
            data, mtime = read_file(f.path)
        except SkipFile as why:
            report.skipped.append((shown_path(f.key), str(why)))
            continue
        doc = _extract(f, data, mtime, report)
        if doc is not None:
            yield doc


def _chunk(doc: DocumentText, embedder: Any, info: CollectionInfo, report: IndexReport) -> _Pending | None:
    """A document cut into chunks with the collection's chunking, or None (skipped) when nothing is left."""
    chunks = chunk_text(doc.text, embedder.count_tokens, info.chunk_tokens, info.chunk_overlap)
    if not chunks:
        report.skipped.append((shown_path(doc.doc.path, doc.doc.is_file), "no text"))
        return None
    return _Pending(doc.doc, chunks)


@contextmanager
def _vector_indexes(store: Store, info: CollectionInfo, bulk: bool) -> Iterator[None]:
    """Around the writes of a run: with `bulk` (a first load of many chunks), drop the HNSW indexes and build
    them once at the end instead of maintaining them row by row (several times faster); otherwise make sure
    they exist. A run killed meanwhile leaves them missing; the next run restores them."""
    with store.connect() as conn:
        if bulk:
            drop_vector_indexes(conn, info.id)
        elif not has_vector_indexes(conn, info.id):
            ensure_vector_indexes(conn, info.id, info.dim)
    try:
        yield
    finally:
        if bulk:
            with store.connect() as conn:
                ensure_vector_indexes(conn, info.id, info.dim)


def _finish(store: Store, info: CollectionInfo, report: IndexReport, gone: Sequence[str]) -> None:
    """Refresh the planner's statistics after new chunks, remove the documents in `gone`, and swap a completed
    re-embedding (a staging collection) in for the collection it rebuilds."""
    if report.chunks_embedded:
        with store.connect() as conn:
            # fresh statistics let the planner pick the HNSW index for the next searches
            conn.execute("ANALYZE documents, chunks")
            # and empty GIN pending lists let it cost (and run) keyword searches through the GIN indexes (a
            # search reads the whole pending list of each index it uses)
            conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin'::regclass), "
                         "gin_clean_pending_list('chunks_impact_gin'::regclass)")
    if gone:
        with store.connect() as conn:
            report.removed = delete_documents(conn, info.id, gone)
    if is_staging(info):
        with store.connect() as conn:
            finish_reembed(conn, info)


def model_prefixes(embedder: Any, query_prefix: str | None, document_prefix: str | None) -> dict[str, Any]:
    """`ensure_collection` arguments for prefixes: the given ones (checked against an existing collection),
    else the model's own (`Embedder.query_prefix`/`document_prefix`, from its GGUF) for a new collection."""
    given = query_prefix is not None or document_prefix is not None
    q = query_prefix if query_prefix is not None else str(getattr(embedder, "query_prefix", "") or "")
    d = document_prefix if document_prefix is not None else str(getattr(embedder, "document_prefix", "") or "")
    return {"prefixes": (q, d), "check_prefixes": given}


def _adopt_legacy_keys(conn, collection_id: int, files: Sequence[FoundFile], known: dict[str, str],
                       file_keys: set[str]) -> None:
    """File documents that earlier versions stored under a path relative to the current folder are re-keyed
    to their canonical key (same content, nothing re-embedded), so no file gets two. `known` and `file_keys`
    are updated to match."""
    for f in files:
        if f.key in known or not _utf8(f.key):
            continue
        for old in legacy_keys(f.key):
            if old in known:
                rekey_file_document(conn, collection_id, old, f.key)
                known[f.key] = known.pop(old)
                file_keys.discard(old)
                file_keys.add(f.key)
                break


def default_chunk_tokens(embedder: Any) -> int:
    """Chunk size: DEFAULT_CHUNK_TOKENS, or less when the model's window is smaller (room for CLS/SEP)."""
    limit = getattr(embedder, "max_tokens", None)
    return min(DEFAULT_CHUNK_TOKENS, int(limit) - 4) if limit else DEFAULT_CHUNK_TOKENS


def _embed_and_write(store, collection_id, pending, embedder, batch_size, report, progress, prefix: str = "") -> None:
    group = max(batch_size * 4, 8)
    flat = [(i, c) for i, p in enumerate(pending) for c in p.chunks]
    next_doc = 0
    with store.connect() as conn:
        for s in range(0, len(flat), group):
            part = flat[s : s + group]
            t = time.perf_counter()
            tick = progress.embedded if progress is not None else None
            vecs = np.asarray(embedder.embed([prefix + c.text for _, c in part], batch_size=batch_size, progress=tick),
                              dtype=np.float32)
            report.embed_seconds += time.perf_counter() - t
            report.chunks_embedded += len(part)
            for (i, _), v in zip(part, vecs, strict=True):
                pending[i].vectors.append(v)
            t = time.perf_counter()
            while next_doc < len(pending) and len(pending[next_doc].vectors) == len(pending[next_doc].chunks):
                done = pending[next_doc]
                write_embedded(conn, collection_id, done.doc, done.chunks, np.stack(done.vectors), report)
                pending[next_doc] = None  # free the text and vectors of written documents
                next_doc += 1
                if progress is not None:
                    progress.written(1)
            report.write_seconds += time.perf_counter() - t


def write_embedded(conn, collection_id: int, doc: DocumentRecord, chunks: Sequence[TextChunk], vectors: np.ndarray,
                   report: IndexReport) -> None:
    """Store one embedded document in its own transaction (binary COPY of its chunks) and count the outcome."""
    records = [ChunkRecord(i, c.text, c.token_count, c.char_start, c.char_end) for i, c in enumerate(chunks)]
    outcome = write_document(conn, collection_id, doc, records, vectors)
    if outcome == "added":
        report.added += 1
    elif outcome == "updated":
        report.updated += 1
    else:
        report.unchanged += 1


# Documents chunked and embedded together when indexing texts in this process (bounds the memory they take).
TEXT_GROUP_DOCS = 256


def index_texts(
    store: Store,
    items: Iterable[tuple[str, str, dict[str, Any] | None]],
    embedder: Any,
    model: ModelIdentity,
    collection: str = DEFAULT_COLLECTION,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    executor: Executor | None = None,
    bulk: bool = False,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> IndexReport:
    """Index texts that are not files: `items` yields `(key, text, metadata)` (or is a Ray Dataset with
    columns `key`, `text` and optionally `metadata`, indexed by a RayExecutor's `run_dataset`); the key plays
    the part of the path (unique in the collection), the content hash is the sha256 of the UTF-8 text (an
    unchanged text is not re-embedded), mtime is 0 and size the UTF-8 length. Items are consumed as they
    come, in groups, so a generator over a large table keeps memory flat.

    With `prune`, documents of the collection whose key did not come are removed. With `bulk`, the HNSW
    indexes are built once after the load (for a first load of many texts). Prefixes as `index_paths`.
    """
    t0 = time.perf_counter()
    report = IndexReport(collection=collection)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(embedder)
    with store.connect() as conn:
        info = ensure_collection(conn, collection, model, chunk_tokens, overlap, reembed=reembed,
                                 **model_prefixes(embedder, query_prefix, document_prefix))
        known = document_hashes(conn, info.id)
    is_dataset = hasattr(items, "map_batches") and hasattr(items, "iter_batches")  # a Ray Dataset
    total = len(items) if isinstance(items, Sized) and not is_dataset else None
    kept: set[str] = set()
    changed = _changed_texts(items, known, report, kept)
    with _vector_indexes(store, info, bulk=bulk and not known):
        if is_dataset:
            if executor is None or not hasattr(executor, "run_dataset"):
                raise InputError("a Ray Dataset is indexed on Ray: pass executor=RayExecutor(...)")
            kept = executor.run_dataset(store, info, embedder, items, known, report, progress)
        elif executor is None:
            if progress is not None:
                progress.planned(total, None)
            while group := list(itertools.islice(changed, TEXT_GROUP_DOCS)):
                pending = [p for d in group if (p := _chunk(d, embedder, info, report)) is not None]
                kept.update(p.doc.path for p in pending)
                _embed_and_write(store, info.id, pending, embedder, batch_size, report, progress,
                                 info.document_prefix)
        else:
            kept |= executor.run(store, info, embedder, changed, total, report, progress)
    _finish(store, info, report, [k for k in known if k not in kept] if prune else [])
    report.total_seconds = time.perf_counter() - t0
    return report


def text_document(key: Any, text: Any, metadata: Any = None) -> DocumentText:
    """The document of one `(key, text, metadata)` item; InputError naming the item if it is not that."""
    if not isinstance(key, str) or not key or not _utf8(key):
        raise InputError(f"text key {key!r}: expected a non-empty UTF-8 string")
    if not isinstance(text, str):
        raise InputError(f"text of {key!r}: expected a string, got {type(text).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata of {key!r}: expected a dict or None, got {type(metadata).__name__}")
    data = text.encode("utf-8", "surrogatepass")
    return DocumentText(DocumentRecord(key, content_sha256(data), 0.0, len(data), dict(metadata or {})),
                        text.replace("\x00", ""))


def _changed_texts(items: Iterable[Any], known: dict[str, str], report: IndexReport,
                   kept: set[str]) -> Iterator[DocumentText]:
    for item in items:
        if not isinstance(item, tuple | list) or len(item) not in (2, 3):
            raise InputError(f"text item {str(item)[:80]!r}: expected a (key, text, metadata) tuple")
        d = text_document(*item)
        if known.get(d.doc.path) == d.doc.content_sha256:
            report.unchanged += 1
            kept.add(d.doc.path)
        elif not d.text.strip():
            report.skipped.append((d.doc.path, "empty"))
        else:
            yield d
