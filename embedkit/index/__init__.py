"""Indexing: walk folders, extract text, chunk by tokens, hash content, embed and write incrementally,
in this process or on a Ray cluster (`RayExecutor`)."""

from embedkit.index.api import index, index_jsonl, index_texts
from embedkit.index.pipeline import DEFAULT_COLLECTION, IndexReport, index_paths
from embedkit.index.ray_executor import RayExecutor

__all__ = ["DEFAULT_COLLECTION", "IndexReport", "RayExecutor", "index", "index_jsonl", "index_paths", "index_texts"]
