"""One-call library API: `index(["docs/"])` into the default store with the default embedding model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from embedkit.index.models import load_embedder, model_identity
from embedkit.index.pipeline import DEFAULT_COLLECTION, IndexProgress, IndexReport, index_paths
from embedkit.store import Store
from embedkit.store.collections import check_collection_name


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
    follow_symlinks: bool = False,
) -> IndexReport:
    """Index files and folders into `collection` (see `index_paths`), loading the model (known name or GGUF
    path; None: the default embedding model) and opening the store as needed."""
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
        return index_paths(
            store, paths, embedder, model_identity(embedder, name, path), collection=collection, include=include,
            exclude=exclude, chunk_tokens=chunk_tokens, overlap=overlap, prune=prune, reembed=reembed,
            batch_size=batch_size, progress=progress, follow_symlinks=follow_symlinks,
        )
    finally:
        if own:
            store.close()
