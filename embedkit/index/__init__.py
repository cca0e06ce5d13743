"""Indexing: walk folders, extract text, chunk by tokens, hash content, embed and write incrementally,
in this process or on a Ray cluster (`RayExecutor`).

The names below load on first use, so a Ray worker that imports `embedkit.index.ray_worker` (chunking and
embedding only) does not load the store's PostgreSQL client."""

from __future__ import annotations

from embedkit.lazy_exports import lazy_getattr

_NAMES = {
    "index": "embedkit.index.api",
    "index_jsonl": "embedkit.index.api",
    "index_texts": "embedkit.index.api",
    "DEFAULT_COLLECTION": "embedkit.index.pipeline",
    "IndexReport": "embedkit.index.pipeline",
    "index_paths": "embedkit.index.pipeline",
    "RayExecutor": "embedkit.index.ray_executor",
}

__all__ = ["DEFAULT_COLLECTION", "IndexReport", "RayExecutor", "index", "index_jsonl", "index_paths", "index_texts"]


__getattr__ = lazy_getattr("embedkit.index", _NAMES, globals())
