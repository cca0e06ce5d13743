"""One-call library API: `search("query")`, `similar("path/or/chunk-id")`, `evaluate(qrels, queries)` on the
default store."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedkit.errors import InputError
from embedkit.index.keys import typed_keys
from embedkit.index.models import embedder_for_collection
from embedkit.index.pipeline import DEFAULT_COLLECTION
from embedkit.search.evaluation import (
    RECALL_AT,
    EvalReport,
    evaluate_runs,
    judged_queries,
    read_qrels,
    read_queries,
    run_queries,
)
from embedkit.search.query import HYBRID_CANDIDATES, RRF_K, ChunkHit, search_hybrid, search_keyword, search_vector
from embedkit.search.recommend import recommend_documents
from embedkit.search.similar import DocumentHit, similar_documents
from embedkit.search.sql import MAX_K
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
    keyword: bool = False,
    chunks: bool = False,
    rrf_k: float = RRF_K,
    candidates: int = HYBRID_CANDIDATES,
    rerank: Any = None,
    rerank_top: int = 20,
) -> list[ChunkHit]:
    """The k documents of `collection` best matching `query`, best first, each as its best chunk (with
    `chunks`: the k best chunks). Vector search by default: the query is embedded with the model the
    collection was built with (or `model`/`embedder`, refused if it differs); `keyword`: BM25 alone;
    `hybrid`: both rankings (`candidates` chunks each) fused by reciprocal rank fusion with constant `rrf_k`.
    `rerank` (a cross-encoder: GGUF path or `Reranker`): the first `rerank_top` results are re-ordered by its
    scores (which become theirs); results past them keep their order and scores."""
    if rerank is not None:
        if not 1 <= rerank_top <= MAX_K:
            raise InputError(f"--rerank-top must be between 1 and {MAX_K}, got {rerank_top}")
        hits = search(query, max(k, rerank_top), collection, model, path_glob, metadata, min_score, hybrid, ef_search,
                      store, embedder, keyword, chunks, rrf_k, candidates)
        return rerank_hits(rerank, query, hits, rerank_top)[:k]
    if not query.strip():
        raise InputError("the query is empty; expected some words to search for")
    if hybrid and keyword:
        raise InputError("--hybrid and --keyword exclude each other; --hybrid already includes keyword ranking")
    if min_score is not None:
        if hybrid or keyword:
            raise InputError("--min-score applies to vector search, not to --hybrid or --keyword")
        if not -1.0 <= min_score <= 1.0:  # also refuses NaN
            raise InputError(f"--min-score must be a cosine similarity in [-1, 1], got {min_score}")
    own = store is None
    store = store or Store()
    try:
        with store.connect_read() as conn:
            info = require_collection(conn, collection)
        if keyword:
            with store.connect_read() as conn:
                return search_keyword(conn, info, query, k, path_glob, metadata, documents=not chunks,
                                      candidates=candidates)
        if embedder is None:
            embedder = embedder_for_collection(info, model)

        def embed_query() -> np.ndarray:
            return np.asarray(embedder.embed([info.query_prefix + query]), dtype=np.float32)[0]

        if hybrid:
            # the keyword half runs on its own connection while the query is embedded (see search_hybrid)
            with store.connect_read() as conn, store.connect_read() as keyword_conn:
                return search_hybrid(conn, info, embed_query, query, k, path_glob, metadata, ef_search,
                                     candidates=candidates, rrf_k=rrf_k, documents=not chunks,
                                     keyword_conn=keyword_conn)
        qvec = embed_query()
        with store.connect_read() as conn:
            return search_vector(conn, info, qvec, k, path_glob, metadata, min_score, ef_search,
                                 documents=not chunks, candidates=candidates)
    finally:
        if own:
            store.close()


def rerank_hits(model: Any, query: str, hits: list[ChunkHit], top: int) -> list[ChunkHit]:
    """The first `top` hits re-ordered by a cross-encoder's scores of their texts (their new scores), then the
    rest unchanged."""
    from dataclasses import replace

    from embedkit.embed.reranker import rerank as cross_encode

    head = hits[:top]
    scores = cross_encode(model, query, [h.text for h in head])
    ranked = sorted(zip(scores, range(len(head)), head, strict=True), key=lambda x: (-x[0], x[1]))
    return [replace(h, score=s) for s, _, h in ranked] + hits[top:]


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
        with store.connect_read() as conn:
            info = require_collection(conn, collection)
            return similar_documents(conn, info, resolve_target(conn, info.id, target), k, ef_search)
    finally:
        if own:
            store.close()


def recommend(
    positive: list[str | int],
    negative: list[str | int] | None = None,
    k: int = 10,
    collection: str = DEFAULT_COLLECTION,
    ef_search: int | None = None,
    store: Store | None = None,
) -> list[DocumentHit]:
    """Documents like the `positive` examples and unlike the `negative` ones (documents by path, as indexed or
    as on disk, or chunks by id), by Qdrant's average-vector strategy (see `embedkit.search.recommend`)."""
    if not positive:
        raise InputError("recommendations need at least one positive example (-p PATH|CHUNK_ID)")
    own = store is None
    store = store or Store()
    try:
        with store.connect() as conn:
            info = require_collection(conn, collection)
            pos = [resolve_target(conn, info.id, t) for t in positive]
            neg = [resolve_target(conn, info.id, t) for t in negative or []]
            return recommend_documents(conn, info, pos, neg, k, ef_search)
    finally:
        if own:
            store.close()


def results_json(hits: list[ChunkHit] | list[DocumentHit]) -> dict[str, Any]:
    """The `--json` output of search, similar and recommend (and the HTTP API's answer): `{"results": [...]}`."""
    return {"results": [h.to_json() for h in hits]}


def resolve_target(conn, collection_id: int, target: str | int) -> str | int:
    """A chunk id (int, or a string of digits that is not a stored path) or a stored document key (the key
    as typed, else the file's key however its path was typed: see `embedkit.index.keys.typed_keys`)."""
    if isinstance(target, int):
        return target
    key = stored_key(conn, collection_id, target)
    if key is not None:
        return key
    if target.isdigit():
        return int(target)
    return target


def stored_key(conn, collection_id: int, typed: str) -> str | None:
    """The stored key of the document a user names by `typed` (a verbatim key, or a file's path as shown or
    as it lies on disk), or None if no document of the collection has it."""
    for key in typed_keys(typed):
        if conn.execute(
            "SELECT 1 FROM documents WHERE collection_id = %s AND md5(path) = md5(%s) AND path = %s",
            (collection_id, key, key),
        ).fetchone():
            return key
    return None


def evaluate(
    qrels: str | os.PathLike[str],
    queries: str | os.PathLike[str],
    collection: str = DEFAULT_COLLECTION,
    mode: str = "vector",
    model: str | os.PathLike[str] | None = None,
    rrf_k: float = RRF_K,
    candidates: int = HYBRID_CANDIDATES,
    ef_search: int | None = None,
    store: Store | None = None,
    embedder: Any = None,
    rerank: Any = None,
    rerank_top: int = 20,
) -> EvalReport:
    """nDCG@10, recall@100 and MRR@10 of `collection` (documents stored under their corpus ids, e.g. by
    `index_jsonl`) on a BEIR-format test set; `mode` is "vector", "keyword" or "hybrid" (document-level
    results, 100 per query); `rerank`: a cross-encoder re-orders each query's first `rerank_top` results."""
    if mode not in ("vector", "keyword", "hybrid"):
        raise InputError(f"mode {mode!r}: expected vector, keyword or hybrid")
    texts = read_queries(queries)
    judged = judged_queries(texts, read_qrels(qrels))
    ids = sorted(judged)
    own = store is None
    store = store or Store()
    try:
        with store.connect() as conn:
            info = require_collection(conn, collection)
        vecs: dict[str, np.ndarray] = {}
        if mode != "keyword":
            if embedder is None:
                embedder = embedder_for_collection(info, model)
            qv = np.asarray(embedder.embed([info.query_prefix + texts[q] for q in ids]), dtype=np.float32)
            vecs = dict(zip(ids, qv, strict=True))
        k = RECALL_AT
        with store.connect() as conn:
            def one(qid: str, text: str) -> list[str]:
                if mode == "keyword":
                    hits = search_keyword(conn, info, text, k, documents=True, candidates=max(candidates, k))
                elif mode == "hybrid":
                    hits = search_hybrid(conn, info, vecs[qid], text, k, ef_search=ef_search,
                                         candidates=max(candidates, k), rrf_k=rrf_k, documents=True)
                else:
                    hits = search_vector(conn, info, vecs[qid], k, ef_search=ef_search, documents=True,
                                         candidates=max(candidates, k))
                if rerank is not None:
                    hits = rerank_hits(rerank, text, hits, rerank_top)
                return [h.path for h in hits]

            runs = run_queries(one, texts, ids)
        return evaluate_runs(runs, judged)
    finally:
        if own:
            store.close()
