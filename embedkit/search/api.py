"""One-call library API: `search("query")`, `similar("path/or/chunk-id")` on the default store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import InputError
from embedkit.index.models import embedder_for_collection
from embedkit.index.pipeline import DEFAULT_COLLECTION
from embedkit.index.walk import legacy_key, root_key
from embedkit.search.query import ChunkHit, search_hybrid, search_vector
from embedkit.search.similar import DocumentHit, similar_documents
from embedkit.store import Store
from embedkit.store.collections import require_collection


def search(
    query: str,
    k: int = 10,
    collection: str = DEFAULT_COLLECTION,
    model: str | os.PathLike[str] | None = None,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    min_score: float | None = None,
    hybrid: bool = False,
    ef_search: int | None = None,
    store: Store | None = None,
    embedder: Any = None,
) -> list[ChunkHit]:
    """Chunks of `collection` most similar to `query`, best first. The query is embedded with the model the
    collection was built with (or `model`/`embedder`, refused if it differs)."""
    if not query.strip():
        raise InputError("the query is empty; expected some words to search for")
    if min_score is not None:
        if hybrid:
            raise InputError("--min-score applies to vector search, not to --hybrid (its scores are rank fusions)")
        if not -1.0 <= min_score <= 1.0:  # also refuses NaN
            raise InputError(f"--min-score must be a cosine similarity in [-1, 1], got {min_score}")
    own = store is None
    store = store or Store()
    try:
        with store.connect() as conn:
            info = require_collection(conn, collection)
        if embedder is None:
            embedder = embedder_for_collection(info, model)
        qvec = np.asarray(embedder.embed([query]), dtype=np.float32)[0]
        with store.connect() as conn:
            if hybrid:
                return search_hybrid(conn, info, qvec, query, k, path_glob, metadata, ef_search)
            return search_vector(conn, info, qvec, k, path_glob, metadata, min_score, ef_search)
    finally:
        if own:
            store.close()


def similar(
    target: str | int,
    k: int = 10,
    collection: str = DEFAULT_COLLECTION,
    ef_search: int | None = None,
    store: Store | None = None,
) -> list[DocumentHit]:
    """Documents most similar to a document (its path, as indexed or as on disk) or to a chunk (its id)."""
    if isinstance(target, str) and not target.strip():
        raise InputError("the target is empty; expected an indexed file's path or a chunk id")
    own = store is None
    store = store or Store()
    try:
        with store.connect() as conn:
            info = require_collection(conn, collection)
            return similar_documents(conn, info, resolve_target(conn, info.id, target), k, ef_search)
    finally:
        if own:
            store.close()


def resolve_target(conn, collection_id: int, target: str | int) -> str | int:
    """A chunk id (int, or a string of digits that is not a stored path) or a stored document path."""
    if isinstance(target, int):
        return target
    on_disk = Path(target).exists()
    # as given, then however else the file may be keyed (see walk.root_key and walk.legacy_key)
    candidates = [target, root_key(target), legacy_key(root_key(target))] if on_disk else [target]
    for key in candidates:
        if key is not None and conn.execute(
            "SELECT 1 FROM documents WHERE collection_id = %s AND md5(path) = md5(%s) AND path = %s",
            (collection_id, key, key),
        ).fetchone():
            return key
    if target.isdigit():
        return int(target)
    return root_key(target) if on_disk else target
