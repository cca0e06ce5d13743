"""Store and search benchmark.

1. Index throughput: examples/corpus with the default embedding model (all-MiniLM-L6-v2) into a fresh
   collection: chunks/s, embedding time shown apart from database time.
2. Search over N (default 100,000) chunks with HNSW: latency p50/p95 and recall@10 against exact search
   (the reference, run in the same process on the same data), unfiltered and with a selective path filter
   (iterative scan). The chunk vectors are synthetic but shaped like real ones: each is a real chunk
   embedding from step 1 plus Gaussian noise (cosine ~0.75 to its centre), renormalised; queries likewise.

    python benchmarks/bench_search.py [--chunks 100000] [--queries 100]

3. At scale (--scale N, toward 1,000,000; --scale-only skips 1 and 2): for each index flavour (--kinds
   vector,halfvec,bit: 384, 2560 and 4096 dimensions, the dimension picks the flavour) N synthetic chunks
   (random cluster centres plus noise, as above) are written through the indexer's write path; the first
   --incremental chunks with the HNSW index maintained row by row, the rest as a bulk load with the index
   built afterwards. Shown: both write rates (and the time an all-incremental load would take at that
   rate), the index build time, sizes on disk (vectors, HNSW index), search latency p50/p95 and recall@10
   against exact search measured in the same run.

Uses EMBEDKIT_DATABASE_URL if set, else an embedded server under a temporary EMBEDKIT_HOME (stopped at the end).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embedkit.index import index_paths
from embedkit.index.models import load_embedder, model_identity
from embedkit.search.query import search_hybrid, search_keyword, search_vector
from embedkit.store import Store
from embedkit.store.collections import (
    ModelIdentity,
    drop_collection,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
)
from embedkit.store.engine import server_info
from embedkit.store.server import start_embedded, stop_embedded
from embedkit.store.writes import ChunkRecord, DocumentRecord, write_document

REPO = Path(__file__).resolve().parents[1]


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def bench_index(store: Store, corpus: Path) -> np.ndarray:
    emb, name, path = load_embedder(None)
    ident = model_identity(emb, name, path)
    with store.connect() as conn:
        drop_collection(conn, "bench-index")
    emb.embed(["warm up the kernels"])
    rep = index_paths(store, [corpus], emb, ident, collection="bench-index")
    print(f"## Index throughput ({corpus.relative_to(REPO) if corpus.is_relative_to(REPO) else corpus}, "
          "all-MiniLM-L6-v2 f32)\n")
    print("| documents | chunks | embedding s | chunks/s (embedding) | database s | chunks/s (database) | total s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {rep.added} | {rep.chunks_embedded} | {rep.embed_seconds:.1f} | "
          f"{rep.chunks_embedded / rep.embed_seconds:.1f} | {rep.write_seconds:.2f} | "
          f"{rep.chunks_embedded / max(rep.write_seconds, 1e-9):.0f} | {rep.total_seconds:.1f} |\n")
    with store.connect() as conn:
        rows = conn.execute("SELECT c.embedding FROM chunks c JOIN collections k ON k.id = c.collection_id "
                            "WHERE k.name = 'bench-index'").fetchall()
    return np.stack([r[0].to_numpy() for r in rows]).astype(np.float32)


def noisy(centres: np.ndarray, n: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    c = centres[rng.integers(0, len(centres), n)]
    v = c + rng.standard_normal(c.shape).astype(np.float32) * sigma
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def word_distribution(corpus: Path) -> tuple[np.ndarray, np.ndarray]:
    """The words of a folder's text files and their relative frequencies."""
    counts: collections.Counter[str] = collections.Counter()
    for f in sorted(corpus.rglob("*")):
        if f.is_file():
            counts.update(re.findall(r"[a-z]{2,}", f.read_text(errors="ignore").lower()))
    words = np.array(sorted(counts))
    freq = np.array([counts[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


# The hybrid query before BM25 (AND semantics through websearch_to_tsquery, ts_rank_cd, chunk-level RRF of
# 50 candidates each): the latency reference for the keyword half.
HYBRID_BEFORE = (
    "WITH v AS MATERIALIZED (SELECT c.id, c.embedding <=> %(q)s::vector AS dist FROM chunks c "
    "WHERE c.collection_id = {cid} ORDER BY c.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT 50), "
    "vr AS (SELECT id, row_number() OVER (ORDER BY dist, id) AS r FROM v), "
    "tq AS (SELECT websearch_to_tsquery('english', %(text)s) AS q), "
    "t AS MATERIALIZED (SELECT c.id, ts_rank_cd(c.tsv, tq.q) AS rank FROM chunks c, tq "
    "WHERE c.collection_id = {cid} AND c.tsv @@ tq.q ORDER BY rank DESC, c.id LIMIT 50), "
    "tr AS (SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM t), "
    "fused AS (SELECT id, sum(1.0 / (60 + r)) AS score FROM "
    "(SELECT id, r FROM vr UNION ALL SELECT id, r FROM tr) u GROUP BY id ORDER BY score DESC, id LIMIT 10) "
    "SELECT d.path, f.score, c.id, c.text FROM fused f JOIN chunks c ON c.collection_id = {cid} AND c.id = f.id "
    "JOIN documents d ON d.collection_id = {cid} AND d.id = c.document_id ORDER BY f.score DESC, c.id"
)


def bench_search(store: Store, centres: np.ndarray, n_chunks: int, n_queries: int, corpus: Path,
                 seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words, probs = word_distribution(corpus)
    dim = centres.shape[1]
    sigma = 0.9 / np.sqrt(dim)  # |noise| ~ 0.9 -> cosine to the centre ~ 0.75
    model = ModelIdentity("synthetic", "synthetic", "synthetic-" + str(dim), "bench", dim, "mean", True)
    per_doc = 100
    n_docs = n_chunks // per_doc
    n_incremental = min(n_docs, 50)  # first documents written with the HNSW indexes maintained row by row

    def load(conn, docs) -> float:
        t0 = time.perf_counter()
        for d in docs:
            vecs = noisy(centres, per_doc, rng, sigma)
            folder = "rare" if d % 100 == 0 else "common"  # 1% of documents for the filtered queries
            texts = [" ".join(rng.choice(words, 60, p=probs)) for _ in range(per_doc)]
            chunks = [ChunkRecord(i, t, 60, 0, len(t)) for i, t in enumerate(texts)]
            write_document(conn, info.id, DocumentRecord(f"{folder}/doc{d:05d}.txt", f"h{d}", 0.0, 10), chunks,
                           vecs)
        return time.perf_counter() - t0

    with store.connect() as conn:
        drop_collection(conn, "bench-search")
        info = ensure_collection(conn, "bench-search", model, 200, 0)
        inc_s = load(conn, range(n_incremental))
        drop_vector_indexes(conn, info.id)  # what the indexer does for a large first load
        bulk_s = load(conn, range(n_incremental, n_docs))
        t0 = time.perf_counter()
        ensure_vector_indexes(conn, info.id, dim)
        build_s = time.perf_counter() - t0
        conn.execute("ANALYZE documents, chunks")
        conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin'::regclass)")
        n = conn.execute("SELECT count(*) FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()[0]
    load_note = (
        f"Write path (one transaction + binary COPY per 100-chunk document): {n_incremental * per_doc:,} chunks "
        f"with HNSW maintained {n_incremental * per_doc / inc_s:.0f} chunks/s; "
        f"{(n_docs - n_incremental) * per_doc:,} chunks without indexes (bulk first load) "
        f"{(n_docs - n_incremental) * per_doc / bulk_s:.0f} chunks/s; HNSW build of both indexes afterwards "
        f"{build_s:.1f} s."
    )
    queries = noisy(centres, n_queries, rng, sigma)
    query_texts = [" ".join(rng.choice(words, 4, p=probs)) for _ in range(n_queries)]

    def exact(conn, q, path_like=None):
        flt, params = "", [q]
        if path_like is not None:
            flt = f" AND document_id IN (SELECT id FROM documents WHERE collection_id = {info.id} AND path LIKE %s)"
            params = [path_like, q]
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            return [r[0] for r in conn.execute(
                f"SELECT id FROM chunks WHERE collection_id = {info.id}{flt} ORDER BY embedding <=> %s::vector, id "
                "LIMIT 10", params)]

    rows = []
    with store.connect() as conn:
        truth = {}
        for label, glob, like in (("all", None, None), ("1% filter", "rare", "rare/%")):
            times, ids = [], []
            for q in queries:
                t = time.perf_counter()
                ids.append(exact(conn, q, like))
                times.append(time.perf_counter() - t)
            truth[label] = ids
            rows.append((f"exact ({label})", times, 1.0))
            for ef in (40, 100, 200):
                times, recall = [], []
                for q, true_ids in zip(queries, ids, strict=True):
                    t = time.perf_counter()
                    got = [h.chunk_id for h in search_vector(conn, info, q, k=10, path_glob=glob, ef_search=ef)]
                    times.append(time.perf_counter() - t)
                    recall.append(len(set(got) & set(true_ids)) / 10)
                rows.append((f"HNSW ef_search={ef} ({label})", times, float(np.mean(recall))))
        timed = {
            "vector, documents (default search: 4 chunks per result, grouped by document)":
                lambda q, t: search_vector(conn, info, q, k=10, documents=True),
            "keyword BM25, documents": lambda q, t: search_keyword(conn, info, t, k=10, documents=True),
            "keyword BM25, chunks": lambda q, t: search_keyword(conn, info, t, k=10),
            "hybrid RRF, documents (100 + 100 candidates)":
                lambda q, t: search_hybrid(conn, info, q, t, k=10, documents=True),
            "hybrid before (AND tsquery, ts_rank_cd, 50 + 50), chunks": lambda q, t: conn.execute(
                HYBRID_BEFORE.format(cid=int(info.id), dim=dim), {"q": q, "text": t}).fetchall(),
        }
        for label, fn in timed.items():
            times = []
            for q, t in zip(queries, query_texts, strict=True):
                t0 = time.perf_counter()
                fn(q, t)
                times.append(time.perf_counter() - t0)
            rows.append((label, times, float("nan")))
    print(f"## Search over {n:,} chunks ({dim} dims, HNSW m=16 ef_construction=64, {n_queries} queries, k=10)\n")
    print(load_note + "\n")
    print("| method | p50 ms | p95 ms | recall@10 |")
    print("|---|---|---|---|")
    for label, times, rec in rows:
        shown = "-" if np.isnan(rec) else f"{rec:.3f}"
        print(f"| {label} | {pct(times, 50) * 1e3:.2f} | {pct(times, 95) * 1e3:.2f} | {shown} |")
    print()


KIND_DIMS = {"vector": 384, "halfvec": 2560, "bit": 4096}


def bench_scale(store: Store, kind: str, n_chunks: int, n_incremental: int, n_queries: int, seed: int = 0) -> None:
    """Part 3 for one index flavour (see the module docstring)."""
    rng = np.random.default_rng(seed)
    dim = KIND_DIMS[kind]
    centres = rng.standard_normal((max(64, n_chunks // 500), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = 0.9 / np.sqrt(dim)
    model = ModelIdentity("synthetic", "synthetic", f"synthetic-scale-{dim}", "bench", dim, "mean", True)
    per_doc = 100
    n_docs = max(1, n_chunks // per_doc)
    n_inc = min(n_docs, max(1, n_incremental // per_doc))
    name = f"bench-scale-{kind}"

    def load(conn, docs) -> float:
        t0 = time.perf_counter()
        for d in docs:
            chunks = [ChunkRecord(i, f"synthetic chunk {d}-{i}", 4, 0, 10) for i in range(per_doc)]
            write_document(conn, info.id, DocumentRecord(f"doc{d:07d}.txt", f"h{d}", 0.0, 10), chunks,
                           noisy(centres, per_doc, rng, sigma))
        return time.perf_counter() - t0

    with store.connect() as conn:
        drop_collection(conn, name)
        info = ensure_collection(conn, name, model, 200, 0)
        inc_s = load(conn, range(n_inc))
        drop_vector_indexes(conn, info.id)
        bulk_s = load(conn, range(n_inc, n_docs))
        t0 = time.perf_counter()
        ensure_vector_indexes(conn, info.id, dim)
        build_s = time.perf_counter() - t0
        conn.execute("VACUUM ANALYZE chunks")
        vec_mb, n = conn.execute("SELECT sum(pg_column_size(embedding)) / 1e6, count(*) FROM chunks "
                                 "WHERE collection_id = %s", (info.id,)).fetchone()
        idx_mb = conn.execute("SELECT pg_relation_size(%s::regclass) / 1e6", (f"chunks_hnsw_c{info.id}",)).fetchone()[0]
    queries = noisy(centres, n_queries, rng, sigma)
    lat: dict[int, list[float]] = {}
    rec: dict[int, list[float]] = {}
    exact_t: list[float] = []
    with store.connect() as conn:
        for q in queries:
            t = time.perf_counter()
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                truth = [r[0] for r in conn.execute(
                    f"SELECT id FROM chunks WHERE collection_id = {info.id} ORDER BY embedding <=> %s::vector, id "
                    "LIMIT 10", (q,))]
            exact_t.append(time.perf_counter() - t)
            for ef in (40, 100, 200):
                t = time.perf_counter()
                got = [h.chunk_id for h in search_vector(conn, info, q, k=10, ef_search=ef)]
                lat.setdefault(ef, []).append(time.perf_counter() - t)
                rec.setdefault(ef, []).append(len(set(got) & set(truth)) / 10)
        drop_collection(conn, name)
    inc_rate = n_inc * per_doc / inc_s
    bulk_rate = (n_docs - n_inc) * per_doc / bulk_s if n_docs > n_inc else float("nan")
    print(f"### {kind}: {n:,} chunks x {dim} dims ({n_queries} queries, k=10)\n")
    print("| incremental chunks/s (HNSW kept) | all-incremental load, est. s | bulk chunks/s (no index) | "
          "HNSW build s | bulk load + build s | vectors MB | HNSW MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {inc_rate:.0f} (first {n_inc * per_doc:,}) | {n / inc_rate:.0f} | {bulk_rate:.0f} | {build_s:.1f} | "
          f"{bulk_s + build_s:.1f} | {vec_mb:.0f} | {idx_mb:.0f} |\n")
    print("| method | p50 ms | p95 ms | recall@10 |")
    print("|---|---|---|---|")
    print(f"| exact — reference | {pct(exact_t, 50) * 1e3:.2f} | {pct(exact_t, 95) * 1e3:.2f} | 1.000 |")
    for ef in (40, 100, 200):
        print(f"| HNSW ef_search={ef} | {pct(lat[ef], 50) * 1e3:.2f} | {pct(lat[ef], 95) * 1e3:.2f} | "
              f"{np.mean(rec[ef]):.3f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--scale", type=int, default=0, help="part 3: chunks per index flavour (0: skip)")
    ap.add_argument("--scale-only", action="store_true", help="run part 3 only")
    ap.add_argument("--kinds", default="vector,halfvec,bit", help="part 3: index flavours")
    ap.add_argument("--incremental", type=int, default=5_000, help="part 3: chunks written with HNSW kept")
    ap.add_argument("--corpus", type=Path, default=REPO / "examples" / "corpus", help="folder to index in part 1")
    ap.add_argument("--random-centres", action="store_true",
                    help="skip part 1: centre vectors drawn at random (384 dims) instead of real chunk embeddings")
    args = ap.parse_args()
    home = None
    if not os.environ.get("EMBEDKIT_DATABASE_URL"):
        home = Path(tempfile.mkdtemp(prefix="embedkit-bench-"))
        store = Store(start_embedded(home))
    else:
        store = Store()
    try:
        si = server_info(store.engine)
        print(f"# bench_search: {platform.machine()}, {os.cpu_count()} cores, PostgreSQL {si.postgres}, "
              f"pgvector {si.pgvector}, {time.strftime('%Y-%m-%d')}\n")
        if not args.scale_only:
            if args.random_centres:
                c = np.random.default_rng(1).standard_normal((196, 384)).astype(np.float32)
                centres = c / np.linalg.norm(c, axis=1, keepdims=True)
            else:
                centres = bench_index(store, args.corpus.resolve())
            bench_search(store, centres, args.chunks, args.queries, args.corpus.resolve())
        if args.scale:
            print(f"## At scale: {args.scale:,} chunks per index flavour\n")
            for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
                bench_scale(store, kind, args.scale, args.incremental, args.queries)
    finally:
        store.close()
        if home is not None:
            stop_embedded(home)
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
