"""Semantic search over chunks: one indexed `ORDER BY distance LIMIT k` query, optionally fused with
Postgres full-text search by reciprocal rank fusion (`hybrid`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg

from embedkit.errors import InputError
from embedkit.search.sql import (
    MAX_K,
    RERANK_FACTOR,
    document_filter,
    exact_distance_expr,
    index_order_expr,
    set_hnsw,
)
from embedkit.store.collections import CollectionInfo

RRF_K = 60  # the usual reciprocal-rank-fusion constant
HYBRID_CANDIDATES = 50


@dataclass(frozen=True)
class ChunkHit:
    """One search result: a chunk, its document's path, and its score (cosine similarity, or the RRF score
    with `hybrid`)."""

    path: str
    score: float
    chunk_id: int
    text: str
    document_id: int
    ordinal: int
    char_start: int
    char_end: int

    def to_json(self) -> dict[str, Any]:
        """The chunk as a `--json` result object."""
        return asdict(self)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"-k must be between 1 and {MAX_K}, got {k}")


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


def search_vector(
    conn: psycopg.Connection,
    info: CollectionInfo,
    qvec: np.ndarray,
    k: int = 10,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    min_score: float | None = None,
    ef_search: int | None = None,
) -> list[ChunkHit]:
    """The k chunks nearest to `qvec` (cosine), best first."""
    _check_k(k)
    params: dict[str, Any] = {"q": np.asarray(qvec, dtype=np.float32), "k": k}
    filt = document_filter(info, path_glob, metadata, params)
    inner = _vector_ids_sql(info, filt, "k")
    sql = (
        f"WITH hits AS MATERIALIZED ({inner}) "
        "SELECT d.path, 1 - h.dist, c.id, c.text, c.document_id, c.ordinal, c.char_start, c.char_end "
        f"FROM hits h JOIN chunks c ON c.collection_id = {int(info.id)} AND c.id = h.id "
        f"JOIN documents d ON d.collection_id = {int(info.id)} AND d.id = c.document_id "
        "ORDER BY h.dist, c.id"
    )
    with conn.transaction():
        set_hnsw(conn, k, ef_search, filtered=bool(filt))
        rows = conn.execute(sql, params).fetchall()
    hits = [ChunkHit(r[0], float(r[1]), *r[2:]) for r in rows]
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    return hits


def search_hybrid(
    conn: psycopg.Connection,
    info: CollectionInfo,
    qvec: np.ndarray,
    query: str,
    k: int = 10,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    ef_search: int | None = None,
    candidates: int = HYBRID_CANDIDATES,
) -> list[ChunkHit]:
    """Vector and full-text (websearch syntax, English stemming) rankings fused by reciprocal rank fusion:
    score = sum over both lists of 1 / (60 + rank)."""
    _check_k(k)
    n = max(candidates, k)
    params: dict[str, Any] = {"q": np.asarray(qvec, dtype=np.float32), "n": n, "k": k, "text": query}
    filt = document_filter(info, path_glob, metadata, params)
    cid = int(info.id)
    vec = _vector_ids_sql(info, filt, "n")
    sql = (
        f"WITH v AS MATERIALIZED ({vec}), "
        "vr AS (SELECT id, row_number() OVER (ORDER BY dist, id) AS r FROM v), "
        "tq AS (SELECT websearch_to_tsquery('english', %(text)s) AS q), "
        "t AS MATERIALIZED (SELECT c.id, ts_rank_cd(c.tsv, tq.q) AS rank FROM chunks c, tq "
        f"WHERE c.collection_id = {cid} AND c.tsv @@ tq.q{filt} ORDER BY rank DESC, c.id LIMIT %(n)s), "
        "tr AS (SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM t), "
        f"fused AS (SELECT id, sum(1.0 / ({RRF_K} + r)) AS score FROM "
        "(SELECT id, r FROM vr UNION ALL SELECT id, r FROM tr) u GROUP BY id ORDER BY score DESC, id LIMIT %(k)s) "
        "SELECT d.path, f.score, c.id, c.text, c.document_id, c.ordinal, c.char_start, c.char_end "
        f"FROM fused f JOIN chunks c ON c.collection_id = {cid} AND c.id = f.id "
        f"JOIN documents d ON d.collection_id = {cid} AND d.id = c.document_id ORDER BY f.score DESC, c.id"
    )
    with conn.transaction():
        set_hnsw(conn, n, ef_search, filtered=bool(filt))
        rows = conn.execute(sql, params).fetchall()
    return [ChunkHit(r[0], float(r[1]), *r[2:]) for r in rows]
