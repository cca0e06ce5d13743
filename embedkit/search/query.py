"""Ranked chunk lists from the store: vector (one indexed `ORDER BY distance LIMIT n` query), keyword (BM25,
see `keyword`), and hybrid (both fused by reciprocal rank fusion), each at chunk or document level."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psycopg

from embedkit.errors import InputError
from embedkit.index.keys import shown_path
from embedkit.search.fusion import RRF_K, best_per_document, fuse_chunks, fuse_documents
from embedkit.search.hits import ChunkHit
from embedkit.search.impacts import BUDGET_CHUNKS, FIRST_CHUNKS
from embedkit.search.keyword import keyword_scores
from embedkit.search.sql import (
    MAX_K,
    RERANK_FACTOR,
    document_filter,
    exact_distance_expr,
    index_order_expr,
    set_hnsw,
)
from embedkit.store.collections import CollectionInfo

__all__ = ["ChunkHit", "HYBRID_CANDIDATES", "RRF_K", "search_hybrid", "search_keyword", "search_vector"]

HYBRID_CANDIDATES = 100  # chunks taken from each ranking before fusing or grouping by document
# The keyword half of hybrid reads about HYBRID_KEYWORD_CHUNKS chunks, as a rule in one pass (the highest-impact
# keys and one tier, see `impacts`), and ranks them by exact BM25: its first HYBRID_PROVEN_KEYWORD are proven when
# that pass proves them, the rest are the best chunks read. The fusion is robust to that: hybrid's nDCG@10 on BEIR
# SciFact and NegConstraint was the same or higher than with 50 proven ranks and up to 1,500 chunks, which read
# 2-3x more chunks (measured in benchmarks/RESULTS.md).
HYBRID_PROVEN_KEYWORD = 10
HYBRID_KEYWORD_CHUNKS = 250


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"-k must be between 1 and {MAX_K}, got {k}")


def _check_candidates(candidates: int) -> None:
    if not 1 <= candidates <= MAX_K:
        raise InputError(f"--candidates must be between 1 and {MAX_K}, got {candidates}")


def _vector_ids_sql(info: CollectionInfo, filt: str, limit_param: str) -> str:
    """SQL selecting (id, dist) of the nearest chunks, nearest first, through the HNSW index."""
    order = index_order_expr(info, "c.embedding")
    cid = int(info.id)
    if info.index_kind == "bit":
        # Hamming distance on binary-quantized vectors finds candidates; exact cosine re-ranks them.
        return (
            f"SELECT cand.id, cand.embedding <=> %(q)s::vector AS dist FROM ("
            f"SELECT c.id, c.embedding FROM chunks c WHERE c.collection_id = {cid}{filt} "
            f"ORDER BY {order} LIMIT %({limit_param})s * {RERANK_FACTOR}) cand "
            f"ORDER BY dist LIMIT %({limit_param})s"
        )
    return (
        f"SELECT c.id, {exact_distance_expr('c.embedding')} AS dist FROM chunks c "
        f"WHERE c.collection_id = {cid}{filt} ORDER BY {order} LIMIT %({limit_param})s"
    )


def _hits_sql(info: CollectionInfo, ranked: str, score: str, order: str) -> str:
    """Chunk rows (ChunkHit fields) of the ids ranked by the `ranked` SQL (alias h)."""
    cid = int(info.id)
    return (
        f"WITH h AS MATERIALIZED ({ranked}) "
        f"SELECT d.path, {score}, c.id, c.text, c.document_id, c.ordinal, c.char_start, c.char_end, d.is_file "
        f"FROM h JOIN chunks c ON c.collection_id = {cid} AND c.id = h.id "
        f"JOIN documents d ON d.collection_id = {cid} AND d.id = c.document_id "
        f"ORDER BY {order}, c.id"
    )


def _rows_to_hits(rows) -> list[ChunkHit]:
    return [ChunkHit(shown_path(r[0], r[8]), float(r[1]), *r[2:8]) for r in rows]


def _vector_ranks_sql(info: CollectionInfo, limit_param: str) -> str:
    """SQL selecting (id, rank) of the nearest chunks in the HNSW index's own order, ranks from 1: no distance
    is computed again from the stored embedding (which lives out of line, so each would be one more read)."""
    return (
        f"SELECT * FROM unnest(ARRAY(SELECT c.id FROM chunks c WHERE c.collection_id = {int(info.id)} "
        f"ORDER BY {index_order_expr(info, 'c.embedding')} LIMIT %({limit_param})s)) WITH ORDINALITY AS x(id, r)"
    )


def vector_chunks(conn, info, qvec, n, path_glob, metadata, ef_search, ranks_only=False) -> list[ChunkHit]:
    """The n chunks nearest to `qvec` (cosine similarity as score), best first. With `ranks_only` (for a
    fusion, which reads only the order), an unfiltered search of a `vector` index takes the index's order (the
    exact cosine order of the vectors it holds, which are the stored ones) and scores are 0."""
    params: dict[str, Any] = {"q": np.asarray(qvec, dtype=np.float32), "n": n}
    filt = document_filter(info, path_glob, metadata, params)
    if ranks_only and not filt and info.index_kind == "vector":
        sql = _hits_sql(info, _vector_ranks_sql(info, "n"), "0.0::float8", "h.r")
    else:
        sql = _hits_sql(info, _vector_ids_sql(info, filt, "n"), "1 - h.dist", "h.dist")
    return _rows_to_hits(_in_one_round_trip(conn, lambda: set_hnsw(conn, n, ef_search, filtered=bool(filt)),
                                            sql, params))


def _in_one_round_trip(conn: psycopg.Connection, settings, sql: str, params: dict[str, Any]) -> list[tuple]:
    """The rows of `sql` run in a transaction after `settings()` (SET LOCAL statements), all sent in one
    pipeline: a loaded server answers one round trip instead of four (BEGIN, settings, query, COMMIT each wait
    for their turn on the CPU). `conn` is in autocommit mode, so the transaction is spelled out."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            settings()
            cur = conn.execute(sql, params)
            conn.execute("COMMIT")
        return cur.fetchall()
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        raise


# The chunk columns a ChunkHit shows, taken in the scan that scores the chunks (see `keyword_chunks`)
_HIT_CHUNK_COLUMNS = ", c.text, c.document_id, c.ordinal, c.char_start, c.char_end"


def _with_document_columns(info: CollectionInfo, ranked: str) -> str:
    """`ranked` SQL (id, score, *_HIT_CHUNK_COLUMNS; best first) with the document's path and is_file added, in
    the same order: the chunks come back in the round trip that ranks them, and only their documents are
    looked up again."""
    cid = int(info.id)
    return (
        f"WITH h AS MATERIALIZED ({ranked}) SELECT h.*, d.path, d.is_file FROM h "
        f"JOIN documents d ON d.collection_id = {cid} AND d.id = h.document_id ORDER BY h.score DESC, h.id"
    )


def keyword_chunks(conn, info, query, n, path_glob, metadata, proven=None, budget=BUDGET_CHUNKS,
                   first=FIRST_CHUNKS) -> list[ChunkHit]:
    """The n best chunks for `query` by BM25 (the score), best first (see `keyword_scores` for `proven`,
    `budget` and `first`)."""
    ranked = keyword_scores(conn, info, query, n, path_glob, metadata, proven=proven, budget=budget, first=first,
                            wrap=lambda sql: _with_document_columns(info, sql), columns=_HIT_CHUNK_COLUMNS)
    if not ranked:
        return []
    if len(ranked[0]) > 2:  # the chunks came with their scores
        return [ChunkHit(shown_path(r[7], r[8]), float(r[1]), int(r[0]), *r[2:7]) for r in ranked]
    params = {"ids": [r[0] for r in ranked], "scores": [r[1] for r in ranked]}
    sql = _hits_sql(info, "SELECT * FROM unnest(%(ids)s::int8[], %(scores)s::float8[]) AS x(id, score)",
                    "h.score", "h.score DESC")
    return _rows_to_hits(conn.execute(sql, params).fetchall())


DOC_CHUNKS_PER_RESULT = 4  # chunks first fetched per wanted document when grouping one ranking by document


def _depth(k: int, candidates: int) -> int:
    """Chunks taken from a ranking for k results: 4 per result, at most `candidates`, at least k."""
    return min(MAX_K, max(k, min(candidates, DOC_CHUNKS_PER_RESULT * k)))


def _documents(fetch, k: int, candidates: int) -> list[ChunkHit]:
    """The k best documents (each as its best chunk) from `fetch(n)`, a ranked chunk list: first
    min(candidates, 4k) chunks (at least k), more while a full list still holds fewer than k documents."""
    n = _depth(k, candidates)
    while True:
        hits = fetch(n)
        docs = best_per_document(hits)
        if len(docs) >= k or len(hits) < n or n >= MAX_K:
            return docs[:k]
        n = min(MAX_K, n * 4)


def search_vector(
    conn: psycopg.Connection,
    info: CollectionInfo,
    qvec: np.ndarray,
    k: int = 10,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    min_score: float | None = None,
    ef_search: int | None = None,
    documents: bool = False,
    candidates: int = HYBRID_CANDIDATES,
) -> list[ChunkHit]:
    """The k chunks (or, with `documents`, the k documents, each as its best chunk) nearest to `qvec`
    (cosine), best first."""
    _check_k(k)
    _check_candidates(candidates)
    if documents:
        hits = _documents(lambda n: vector_chunks(conn, info, qvec, n, path_glob, metadata, ef_search), k,
                          candidates)
    else:
        hits = vector_chunks(conn, info, qvec, k, path_glob, metadata, ef_search)
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    return hits


def search_keyword(
    conn: psycopg.Connection,
    info: CollectionInfo,
    query: str,
    k: int = 10,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    documents: bool = False,
    candidates: int = HYBRID_CANDIDATES,
) -> list[ChunkHit]:
    """The k chunks (or documents, each as its best chunk) with the best BM25 score for `query`."""
    _check_k(k)
    _check_candidates(candidates)
    if documents:
        return _documents(lambda n: keyword_chunks(conn, info, query, n, path_glob, metadata), k, candidates)
    return keyword_chunks(conn, info, query, k, path_glob, metadata)


def search_hybrid(
    conn: psycopg.Connection,
    info: CollectionInfo,
    qvec: np.ndarray | Callable[[], np.ndarray],
    query: str,
    k: int = 10,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    ef_search: int | None = None,
    candidates: int = HYBRID_CANDIDATES,
    rrf_k: float = RRF_K,
    documents: bool = False,
    keyword_conn: psycopg.Connection | None = None,
) -> list[ChunkHit]:
    """Vector and BM25 rankings (4k chunks each, at most `candidates`, at least k) fused by reciprocal rank fusion:
    score = sum over both rankings of 1 / (rrf_k + rank). With `documents`, each ranking is first collapsed to
    its documents (a document ranks as its best chunk) and documents are fused (see `fuse_documents`).
    With `keyword_conn` (a second connection to the same database), the keyword half runs on it while the
    vector half runs on `conn`. `qvec` may be a function returning the query vector (e.g. embedding the query):
    it is called after the keyword half has started, so that with `keyword_conn` the keyword half does not wait
    for it."""
    _check_k(k)
    _check_candidates(candidates)
    if not rrf_k >= 0:  # also refuses NaN
        raise InputError(f"--rrf-k must be >= 0, got {rrf_k}")
    n = _depth(k, candidates)
    vector = qvec if callable(qvec) else lambda: qvec
    if keyword_conn is None:
        vec = vector_chunks(conn, info, vector(), n, path_glob, metadata, ef_search, ranks_only=True)
        kw = keyword_chunks(conn, info, query, n, path_glob, metadata, HYBRID_PROVEN_KEYWORD, HYBRID_KEYWORD_CHUNKS,
                            HYBRID_KEYWORD_CHUNKS)
    else:
        # the server runs the keyword half on its own connection while this thread gets the query vector and
        # runs the vector half: the hybrid's latency is the longer of the two, not their sum
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(keyword_chunks, keyword_conn, info, query, n, path_glob, metadata,
                                  HYBRID_PROVEN_KEYWORD, HYBRID_KEYWORD_CHUNKS, HYBRID_KEYWORD_CHUNKS)
            vec = vector_chunks(conn, info, vector(), n, path_glob, metadata, ef_search, ranks_only=True)
            kw = pending.result()
    if documents:
        return fuse_documents([vec, kw], k, rrf_k)
    return fuse_chunks([vec, kw], k, rrf_k)
