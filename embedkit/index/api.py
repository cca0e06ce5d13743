"""One-call library API: `index(["docs/"])` into the default store with the default embedding model, and
`index_texts(rows)` for texts that are not files (a table, a Parquet set as a Ray Dataset)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from embedkit.index.models import load_embedder, model_identity
from embedkit.index.pipeline import (
    DEFAULT_COLLECTION,
    Executor,
    IndexProgress,
    IndexReport,
    index_paths,
)
from embedkit.index.pipeline import index_texts as _index_texts
from embedkit.store import Store
from embedkit.store.collections import check_collection_name


def _run(collection: str, model: Any, store: Store | None, embedder: Any, chunk_tokens: int,
         job: Callable[[Store, Any, Any, int], IndexReport]) -> IndexReport:
    """Open the store and load the model as needed, then `job(store, embedder, identity, chunk_tokens)`."""
    check_collection_name(collection)  # before the database and the model
    own = store is None
    store = store or Store()  # first, so an unreachable database fails before the model loads
    try:
        if embedder is None:
            embedder, name, path = load_embedder(model)
        else:
            name, path = os.fspath(model) if model is not None else str(embedder.model_name), None
        limit = getattr(embedder, "max_tokens", None)
        if limit:
            chunk_tokens = min(chunk_tokens, int(limit) - 4)
        return job(store, embedder, model_identity(embedder, name, path), chunk_tokens)
    finally:
        if own:
            store.close()


def index(
    paths: Sequence[str | os.PathLike[str]],
    collection: str = DEFAULT_COLLECTION,
    model: str | os.PathLike[str] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    store: Store | None = None,
    embedder: Any = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    executor: Executor | None = None,
    follow_symlinks: bool = False,
) -> IndexReport:
    """Index files and folders into `collection` (see `index_paths`), loading the model (known name or GGUF
    path; None: the default embedding model) and opening the store as needed. With `executor` (e.g.
    `RayExecutor("auto")`), the changed files are chunked and embedded there."""
    return _run(collection, model, store, embedder, chunk_tokens, lambda st, emb, ident, ct: index_paths(
        st, paths, emb, ident, collection=collection, include=include, exclude=exclude, chunk_tokens=ct,
        overlap=overlap, prune=prune, reembed=reembed, batch_size=batch_size, progress=progress,
        query_prefix=query_prefix, document_prefix=document_prefix, executor=executor,
        follow_symlinks=follow_symlinks,
    ))


def index_jsonl(
    path: str | os.PathLike[str],
    collection: str = DEFAULT_COLLECTION,
    model: str | os.PathLike[str] | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    store: Store | None = None,
    embedder: Any = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> IndexReport:
    """Index a JSON-lines corpus (BEIR `corpus.jsonl`: `_id`, `title`, `text` per line) into `collection`,
    each document stored under its `_id` (see `index_jsonl_documents`)."""
    from embedkit.index.jsonl import index_jsonl_documents

    return _run(collection, model, store, embedder, chunk_tokens, lambda st, emb, ident, ct: index_jsonl_documents(
        st, path, emb, ident, collection=collection, chunk_tokens=ct, overlap=overlap, prune=prune,
        reembed=reembed, batch_size=batch_size, progress=progress, query_prefix=query_prefix,
        document_prefix=document_prefix,
    ))


def index_texts(
    items: Iterable[tuple[str, str, dict[str, Any] | None]] | Any,
    collection: str = DEFAULT_COLLECTION,
    model: str | os.PathLike[str] | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    store: Store | None = None,
    embedder: Any = None,
    executor: Executor | None = None,
    bulk: bool = False,
) -> IndexReport:
    """Index texts that are not files: an iterable of `(key, text, metadata)`, or a Ray Dataset with columns
    `key`, `text` and optionally `metadata` (with a RayExecutor). See `embedkit.index.pipeline.index_texts`."""
    return _run(collection, model, store, embedder, chunk_tokens, lambda st, emb, ident, ct: _index_texts(
        st, items, emb, ident, collection=collection, chunk_tokens=ct, overlap=overlap, prune=prune,
        reembed=reembed, batch_size=batch_size, progress=progress, executor=executor, bulk=bulk,
    ))
