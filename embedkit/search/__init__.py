"""Search: semantic (HNSW), keyword (BM25 in SQL), hybrid (both, RRF), document-level results, and
more-like-this recommendations."""

from embedkit.search.api import recommend, results_json, search, similar
from embedkit.search.query import ChunkHit, search_hybrid, search_keyword, search_vector
from embedkit.search.similar import DocumentHit, similar_documents

__all__ = [
    "ChunkHit", "DocumentHit", "recommend", "results_json", "search", "search_hybrid", "search_keyword",
    "search_vector", "similar", "similar_documents",
]
