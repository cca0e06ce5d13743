"""Search: semantic (HNSW), hybrid (full-text + vector, RRF), and more-like-this recommendations."""

from embedkit.search.api import recommend, results_json, search, similar
from embedkit.search.query import ChunkHit, search_hybrid, search_vector
from embedkit.search.similar import DocumentHit, similar_documents

__all__ = ["ChunkHit", "DocumentHit", "recommend", "results_json", "search", "search_hybrid", "search_vector",
           "similar", "similar_documents"]
