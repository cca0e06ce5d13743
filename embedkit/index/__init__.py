"""Indexing: walk folders, extract text, chunk by tokens, hash content, embed and write incrementally."""

from embedkit.index.api import index, index_jsonl
from embedkit.index.pipeline import DEFAULT_COLLECTION, IndexReport, index_paths

__all__ = ["DEFAULT_COLLECTION", "IndexReport", "index", "index_jsonl", "index_paths"]
