"""Turning ranked chunk lists into results: one row per document (its best chunk), and reciprocal rank fusion
of several rankings. Pure functions over `ChunkHit` lists, best first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from embedkit.search.hits import ChunkHit

RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al.)


def best_per_document(hits: Sequence[ChunkHit]) -> list[ChunkHit]:
    """The first (best) chunk of each document, in the order given: a document scores as its best chunk."""
    seen: set[int] = set()
    out = []
    for h in hits:
        if h.document_id not in seen:
            seen.add(h.document_id)
            out.append(h)
    return out


def rrf_scores(rankings: Sequence[Sequence[int]], rrf_k: float = RRF_K) -> dict[int, float]:
    """key -> sum over the rankings holding it of 1 / (rrf_k + rank), ranks counted from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (rrf_k + rank)
    return scores


def _ordered(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda key: (-scores[key], key))


def fuse_chunks(rankings: Sequence[Sequence[ChunkHit]], k: int, rrf_k: float = RRF_K) -> list[ChunkHit]:
    """The k best chunks by RRF over chunk rankings; each hit's score is its fused score."""
    by_id = {h.chunk_id: h for ranking in rankings for h in ranking}
    scores = rrf_scores([[h.chunk_id for h in r] for r in rankings], rrf_k)
    return [replace(by_id[cid], score=scores[cid]) for cid in _ordered(scores)[:k]]


def fuse_documents(rankings: Sequence[Sequence[ChunkHit]], k: int, rrf_k: float = RRF_K) -> list[ChunkHit]:
    """The k best documents by RRF over the document rankings (each ranking collapsed to its documents' best
    chunks). A document's snippet is its chunk with the best chunk-level fused score; its score is the
    document-level fused score."""
    doc_scores = rrf_scores([[h.document_id for h in best_per_document(r)] for r in rankings], rrf_k)
    chunk_scores = rrf_scores([[h.chunk_id for h in r] for r in rankings], rrf_k)
    best: dict[int, ChunkHit] = {}
    for ranking in rankings:
        for h in ranking:
            cur = best.get(h.document_id)
            if cur is None or (-chunk_scores[h.chunk_id], h.chunk_id) < (-chunk_scores[cur.chunk_id], cur.chunk_id):
                best[h.document_id] = h
    return [replace(best[d], score=doc_scores[d]) for d in _ordered(doc_scores)[:k]]
