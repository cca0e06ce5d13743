"""Store and search benchmark.

1. Index throughput: examples/corpus with the default embedding model (all-MiniLM-L6-v2) into a fresh
   collection: chunks/s, embedding time shown apart from database time.
2. Search over N (default 100,000) chunks with HNSW: latency p50/p95 and recall@10 against exact search
   (the reference, run in the same process on the same data), unfiltered and with a selective path filter
   (iterative scan). The chunk vectors are synthetic but shaped like real ones: each is a real chunk
   embedding from step 1 plus Gaussian noise (cosine ~0.75 to its centre), renormalised; queries likewise.

    python benchmarks/bench_search.py [--chunks 100000] [--queries 100] [--random-centres] [--home DIR]
                                      [--embed-queries]

   With --home the store is kept there and a later run with the same arguments reuses its collection (same
   chunks and queries) instead of writing it again. Keyword, hybrid and the hybrid SQL of before BM25 (alone, at
   pgvector's default ef_search of 40, and as it ran: after setting ef_search = 100 in its transaction) are timed
   each over the queries in a row, then all round robin (the order turning by one place per query). With
   --embed-queries, also both hybrids end to end as `search --hybrid` runs them: the query text embedded by the
   default model first (before) or while the keyword half runs (now).

3. At scale (--scale N, toward 1,000,000; --scale-only skips 1 and 2): for each index flavour (--kinds
   vector,halfvec,bit: 384, 2560 and 4096 dimensions, the dimension picks the flavour as embedkit does; with
   --dims D every flavour at D dimensions, the flavour forced with the same index and query SQL) N synthetic
   chunks (random cluster centres plus noise, as above) are written once through the indexer's write path
   with no index (the bulk first load); then per flavour: the first --incremental of the same chunks into an
   empty collection with that HNSW index maintained row by row, the index built over all N, sizes on disk,
   search latency p50/p95 and recall@10 against exact search (run once per dimension in the same run). Shown:
   both write rates (and the time an all-incremental load would take at the incremental rate), the build
   time, sizes (vectors, HNSW indexes), the server's settings, its notices (e.g. a graph outgrowing
   maintenance_work_mem) and timestamped progress lines with the load average.

    python benchmarks/bench_search.py --scale-only --scale 1000000 --dims 384 --incremental 20000 --queries 30

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.index import index_paths
from embedkit.index.models import load_embedder, model_identity
from embedkit.search.query import search_hybrid, search_keyword, search_vector
from embedkit.search.sql import index_order_expr
from embedkit.store import Store
from embedkit.store.collections import (
    CollectionInfo,
    ModelIdentity,
    drop_collection,
    drop_vector_indexes,
    ensure_collection,
    ensure_vector_indexes,
    index_kind,
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


def hybrid_before_as_it_ran(conn, cid: int, dim: int, q: np.ndarray, text: str) -> list[tuple]:
    """HYBRID_BEFORE as `search --hybrid` ran it before BM25: in a transaction that first set hnsw.ef_search to
    max(100, its 50 candidates) (BEGIN, SET LOCAL, the query, COMMIT); HYBRID_BEFORE alone runs at pgvector's
    default ef_search of 40."""
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 100")
        return conn.execute(HYBRID_BEFORE.format(cid=cid, dim=dim), {"q": q, "text": text}).fetchall()


def reused_collection(conn, model: ModelIdentity, n_chunks: int) -> CollectionInfo | None:
    """The "bench-search" collection of an earlier run kept under --home, if it holds `n_chunks` chunks of the
    same synthetic model, else None (it is then built afresh)."""
    from embedkit.store.collections import get_collection

    info = get_collection(conn, "bench-search")
    if info is None or info.model.model_sha256 != model.model_sha256:
        return None
    n = conn.execute("SELECT count(*) FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()[0]
    return info if n == n_chunks else None


def bench_search(store: Store, centres: np.ndarray, n_chunks: int, n_queries: int, corpus: Path,
                 seed: int = 0, reuse: bool = False, embedder=None) -> None:
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
        info = reused_collection(conn, model, n_docs * per_doc) if reuse else None
        if info is not None:
            load_note = "Reused the stored collection of an earlier run with the same arguments (--home)."
            # the loads draw from rng: draw as they would have, so the queries are the same as in that run
            for _ in range(n_docs):
                noisy(centres, per_doc, rng, sigma)
                [rng.choice(words, 60, p=probs) for _ in range(per_doc)]
        else:
            drop_collection(conn, "bench-search")
            info = ensure_collection(conn, "bench-search", model, 200, 0)
            inc_s = load(conn, range(n_incremental))
            drop_vector_indexes(conn, info.id)  # what the indexer does for a large first load
            bulk_s = load(conn, range(n_incremental, n_docs))
            t0 = time.perf_counter()
            ensure_vector_indexes(conn, info.id, dim)
            build_s = time.perf_counter() - t0
            load_note = (
                f"Write path (one transaction + binary COPY per 100-chunk document): {n_incremental * per_doc:,} "
                f"chunks with HNSW maintained {n_incremental * per_doc / inc_s:.0f} chunks/s; "
                f"{(n_docs - n_incremental) * per_doc:,} chunks without indexes (bulk first load) "
                f"{(n_docs - n_incremental) * per_doc / bulk_s:.0f} chunks/s; HNSW build of both indexes "
                f"afterwards {build_s:.1f} s."
            )
        conn.execute("ANALYZE documents, chunks")
        conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin'::regclass), "
                     "gin_clean_pending_list('chunks_impact_gin'::regclass)")
        n = conn.execute("SELECT count(*) FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()[0]
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
    with store.connect() as conn, store.connect() as conn2:
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
            "hybrid RRF, documents (40 + 40 chunks at k = 10; halves at once on two connections, as `search`)":
                lambda q, t: search_hybrid(conn, info, q, t, k=10, documents=True, keyword_conn=conn2),
            "hybrid RRF, documents (40 + 40 chunks; one connection, halves in turn)":
                lambda q, t: search_hybrid(conn, info, q, t, k=10, documents=True),
            "hybrid before (AND tsquery, ts_rank_cd, 50 + 50), chunks": lambda q, t: conn.execute(
                HYBRID_BEFORE.format(cid=int(info.id), dim=dim), {"q": q, "text": t}).fetchall(),
            "hybrid before as it ran (the same SQL after SET LOCAL hnsw.ef_search = 100 in its transaction)":
                lambda q, t: hybrid_before_as_it_ran(conn, int(info.id), dim, q, t),
        }
        if embedder is not None:
            # what `search --hybrid` does end to end: the query text embedded (the model's vector replaces the
            # synthetic one), before it (old) or while the keyword half runs on the second connection (new)
            def embedded(t: str) -> np.ndarray:
                return np.asarray(embedder.embed([t]), dtype=np.float32)[0]

            timed["query embedded while the keyword half runs, then hybrid RRF, documents (as `search --hybrid`)"] = (
                lambda q, t: search_hybrid(conn, info, lambda: embedded(t), t, k=10, documents=True,
                                           keyword_conn=conn2))
            timed["query embedded, then hybrid before (as `search --hybrid` before BM25)"] = (
                lambda q, t: conn.execute(HYBRID_BEFORE.format(cid=int(info.id), dim=dim),
                                          {"q": embedded(t), "text": t}).fetchall())
        # Each method over all queries in a row, then all methods round robin query by query (on a shared
        # machine a change of load then hits every method alike), the order turning.
        for label, fn in timed.items():
            times = []
            for q, t in zip(queries, query_texts, strict=True):
                t0 = time.perf_counter()
                fn(q, t)
                times.append(time.perf_counter() - t0)
            rows.append((label, times, float("nan")))
        # The order turns by one place per query: the first method to read a query's chunks warms the caches
        # for the others (measured: a fixed order favoured whichever came later by up to 1.5x).
        robin: dict[str, list[float]] = {label: [] for label in timed}
        labels = list(timed)
        for i, (q, t) in enumerate(zip(queries, query_texts, strict=True)):
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                t0 = time.perf_counter()
                timed[label](q, t)
                robin[label].append(time.perf_counter() - t0)
        rows.extend((f"{label} — round robin", times, float("nan")) for label, times in robin.items())
    print(f"## Search over {n:,} chunks ({dim} dims, HNSW m=16 ef_construction=64, {n_queries} queries, k=10), "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} after the queries\n")
    print(load_note + "\n")
    print("| method | p50 ms | p95 ms | recall@10 |")
    print("|---|---|---|---|")
    for label, times, rec in rows:
        shown = "-" if np.isnan(rec) else f"{rec:.3f}"
        print(f"| {label} | {pct(times, 50) * 1e3:.2f} | {pct(times, 95) * 1e3:.2f} | {shown} |")
    print()


KIND_DIMS = {"vector": 384, "halfvec": 2560, "bit": 4096}

# The index expression and operator class of each flavour, as migrations/versions/0001_initial.py builds them.
FLAVOUR_INDEX = {
    "vector": ("(embedding::vector({d}))", "vector_cosine_ops"),
    "halfvec": ("(embedding::halfvec({d}))", "halfvec_cosine_ops"),
    "bit": ("(binary_quantize(embedding)::bit({d}))", "bit_hamming_ops"),
}


@dataclass(frozen=True)
class FlavouredCollection(CollectionInfo):
    """A collection searched through an index flavour other than the one its dimension picks (--dims)."""

    flavour: str = "vector"

    @property
    def index_kind(self) -> str:
        return self.flavour


def build_indexes(conn, info: CollectionInfo, kind: str, maintenance_work_mem: str) -> None:
    """The collection's two HNSW indexes of flavour `kind`: embedkit's own function when the dimension picks
    that flavour, else the same statements with the flavour forced."""
    if kind == index_kind(info.dim):
        ensure_vector_indexes(conn, info.id, info.dim, maintenance_work_mem)
        return
    expr, ops = FLAVOUR_INDEX[kind]
    cid = int(info.id)
    with conn.transaction():
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
        for table in ("chunks", "documents"):
            conn.execute(f"CREATE INDEX {table}_hnsw_c{cid} ON {table} USING hnsw ({expr.format(d=int(info.dim))} "
                         f"{ops}) WHERE collection_id = {cid}")


def flavoured(info: CollectionInfo, kind: str) -> CollectionInfo:
    return info if kind == index_kind(info.dim) else FlavouredCollection(**vars(info), flavour=kind)


PER_DOC = 100


def load_docs(conn, info: CollectionInfo, docs: range, vectors) -> float:
    """Write documents of 100 synthetic chunks through the indexer's write path; seconds taken."""
    t0 = time.perf_counter()
    for d in docs:
        chunks = [ChunkRecord(i, f"synthetic chunk {d}-{i}", 4, 0, 10) for i in range(PER_DOC)]
        write_document(conn, info.id, DocumentRecord(f"doc{d:07d}.txt", f"h{d}", 0.0, 10), chunks, vectors(d))
    return time.perf_counter() - t0


def show_notice(diag) -> None:
    """Print the server's notices (a graph outgrowing maintenance_work_mem, ...), not DROP ... IF EXISTS ones."""
    if not (diag.message_primary or "").endswith("does not exist, skipping"):
        print(f"  (server: {diag.message_primary})", flush=True)


def stamp(what: str) -> None:
    """A progress line with the time and the load average (the machine may be shared)."""
    la = os.getloadavg()
    print(f"- {time.strftime('%H:%M:%S')} UTC, load {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}: {what}", flush=True)


def bench_scale(store: Store, kinds: list[str], dim: int, n_chunks: int, n_incremental: int, n_queries: int,
                maintenance_work_mem: str, seed: int = 0) -> None:
    """Part 3 for the index flavours `kinds`, all over the same `n_chunks` vectors of `dim` dimensions (see the
    module docstring): one bulk load, then per flavour its incremental rate, index build, sizes and search."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, n_chunks // 500), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = 0.9 / np.sqrt(dim)
    model = ModelIdentity("synthetic", "synthetic", f"synthetic-scale-{dim}", "bench", dim, "mean", True)
    n_docs = max(1, n_chunks // PER_DOC)
    n_inc = min(n_docs, max(1, n_incremental // PER_DOC))
    seeds = rng.integers(0, 2**63, n_docs)  # one seed per document: every load writes the same vectors

    def vectors(d: int) -> np.ndarray:
        return noisy(centres, PER_DOC, np.random.default_rng(seeds[d]), sigma)

    name = f"bench-scale-{dim}"
    with store.connect() as conn:
        conn.add_notice_handler(show_notice)
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in (
            "shared_buffers", "work_mem", "max_parallel_maintenance_workers", "max_parallel_workers",
            "max_wal_size", "synchronous_commit")}
        print(f"### {n_docs * PER_DOC:,} chunks x {dim} dims: {', '.join(kinds)}\n")
        print("Server settings: " + ", ".join(f"{k} {v}" for k, v in settings.items())
              + f"; maintenance_work_mem {maintenance_work_mem} per index build (embedkit sets 512MB).\n")
        drop_collection(conn, name)
        info = ensure_collection(conn, name, model, 200, 0)
        drop_vector_indexes(conn, info.id)
        stamp(f"bulk load of {n_docs * PER_DOC:,} chunks (no index)")
        bulk_s = load_docs(conn, info, range(n_docs), vectors)
        conn.execute("VACUUM ANALYZE chunks")
        conn.execute("VACUUM ANALYZE documents")
        n, vec_mb = conn.execute("SELECT count(*), sum(pg_column_size(embedding)) / 1e6 FROM chunks "
                                 "WHERE collection_id = %s", (info.id,)).fetchone()
        heap_mb, table_mb = conn.execute("SELECT pg_relation_size('chunks') / 1e6, "
                                         "pg_total_relation_size('chunks') / 1e6").fetchone()
        stamp(f"bulk load done: {n / bulk_s:.0f} chunks/s; chunks heap {heap_mb:.0f} MB")
    queries = noisy(centres, n_queries, rng, sigma)
    truth, exact_t = [], []
    with store.connect() as conn:
        for q in queries:
            t = time.perf_counter()
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                truth.append([r[0] for r in conn.execute(
                    f"SELECT id FROM chunks WHERE collection_id = {info.id} ORDER BY embedding <=> %s::vector, id "
                    "LIMIT 10", (q,))])
            exact_t.append(time.perf_counter() - t)
    stamp(f"exact search of {n_queries} queries: p50 {pct(exact_t, 50):.2f} s")
    print(f"\nBulk load (all {n:,} chunks, no index): {n / bulk_s:.0f} chunks/s, {bulk_s:.0f} s. Vectors "
          f"{vec_mb:.0f} MB; chunks table {heap_mb:.0f} MB heap, {table_mb:.0f} MB with TOAST and its other "
          f"indexes. Exact search (the reference): p50 {pct(exact_t, 50) * 1e3:.0f} ms, p95 "
          f"{pct(exact_t, 95) * 1e3:.0f} ms.\n", flush=True)
    for kind in kinds:
        with store.connect() as conn:
            conn.add_notice_handler(show_notice)
            # Incremental: the first n_inc documents into an empty collection whose index is kept row by row.
            inc_name = f"bench-scale-inc-{dim}"
            drop_collection(conn, inc_name)
            inc = ensure_collection(conn, inc_name, model, 200, 0)
            if kind != index_kind(dim):
                drop_vector_indexes(conn, inc.id)
                build_indexes(conn, inc, kind, maintenance_work_mem)
            stamp(f"{kind}: incremental load of {n_inc * PER_DOC:,} chunks")
            inc_s = load_docs(conn, inc, range(n_inc), vectors)
            drop_collection(conn, inc_name)
            stamp(f"{kind}: HNSW build over {n:,} chunks")
            t0 = time.perf_counter()
            build_indexes(conn, info, kind, maintenance_work_mem)
            build_s = time.perf_counter() - t0
            idx_mb, doc_idx_mb = conn.execute(
                "SELECT pg_relation_size(%s::regclass) / 1e6, pg_relation_size(%s::regclass) / 1e6",
                (f"chunks_hnsw_c{info.id}", f"documents_hnsw_c{info.id}")).fetchone()
            stamp(f"{kind}: built in {build_s:.0f} s, {idx_mb:.0f} MB")
        lat: dict[int, list[float]] = {}
        rec: dict[int, list[float]] = {}
        searched = flavoured(info, kind)
        with store.connect() as conn:
            plan = "\n".join(r[0] for r in conn.execute(
                f"EXPLAIN SELECT c.id FROM chunks c WHERE c.collection_id = {int(info.id)} "
                f"ORDER BY {index_order_expr(searched, 'c.embedding')} LIMIT 10", {"q": queries[0]}))
            if f"chunks_hnsw_c{info.id}" not in plan:
                print(f"  (the query plan does not use the {kind} HNSW index:)\n{plan}", flush=True)
            for q, want in zip(queries, truth, strict=True):
                for ef in (40, 100, 200):
                    t = time.perf_counter()
                    got = [h.chunk_id for h in search_vector(conn, searched, q, k=10, ef_search=ef)]
                    lat.setdefault(ef, []).append(time.perf_counter() - t)
                    rec.setdefault(ef, []).append(len(set(got) & set(want)) / 10)
            drop_vector_indexes(conn, info.id)
        inc_rate = n_inc * PER_DOC / inc_s
        label = kind + (" (binary-quantized, exact re-rank)" if kind == "bit" else "")
        print(f"\n#### {label}: {n:,} chunks x {dim} dims ({n_queries} queries, k=10)\n")
        print("| incremental chunks/s (HNSW kept) | all-incremental load, est. s | bulk chunks/s (no index) | "
              "HNSW build s | bulk load + build s | vectors MB | chunks HNSW MB | documents HNSW MB |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {inc_rate:.0f} (first {n_inc * PER_DOC:,}) | {n / inc_rate:.0f} | {n / bulk_s:.0f} | {build_s:.1f} | "
              f"{bulk_s + build_s:.1f} | {vec_mb:.0f} | {idx_mb:.0f} | {doc_idx_mb:.0f} |\n")
        print("| method | p50 ms | p95 ms | recall@10 |")
        print("|---|---|---|---|")
        print(f"| exact — reference | {pct(exact_t, 50) * 1e3:.2f} | {pct(exact_t, 95) * 1e3:.2f} | 1.000 |")
        for ef in (40, 100, 200):
            print(f"| HNSW ef_search={ef} | {pct(lat[ef], 50) * 1e3:.2f} | {pct(lat[ef], 95) * 1e3:.2f} | "
                  f"{np.mean(rec[ef]):.3f} |")
        print(flush=True)
    with store.connect() as conn:
        drop_collection(conn, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--scale", type=int, default=0, help="part 3: chunks per index flavour (0: skip)")
    ap.add_argument("--scale-only", action="store_true", help="run part 3 only")
    ap.add_argument("--kinds", default="vector,halfvec,bit", help="part 3: index flavours")
    ap.add_argument("--incremental", type=int, default=5_000, help="part 3: chunks written with HNSW kept")
    ap.add_argument("--dims", type=int, default=0,
                    help="part 3: one dimension for every flavour (the flavour is then forced, not picked by it)")
    ap.add_argument("--maintenance-work-mem", default="512MB",
                    help="part 3: memory per index build (embedkit sets 512MB)")
    ap.add_argument("--corpus", type=Path, default=REPO / "examples" / "corpus", help="folder to index in part 1")
    ap.add_argument("--home", type=Path, default=None,
                    help="keep the embedded store here and reuse its 'bench-search' collection when a later run "
                         "asks for the same one (default: a temporary store, removed at the end)")
    ap.add_argument("--embed-queries", action="store_true",
                    help="also time hybrid search end to end with the query text embedded by the default model "
                         "(all-MiniLM-L6-v2), against the old hybrid with the query embedded first")
    ap.add_argument("--random-centres", action="store_true",
                    help="skip part 1: centre vectors drawn at random (384 dims) instead of real chunk embeddings")
    args = ap.parse_args()
    home = None
    if args.home is not None:
        args.home.mkdir(parents=True, exist_ok=True)
        store = Store(start_embedded(args.home))
    elif not os.environ.get("EMBEDKIT_DATABASE_URL"):
        home = Path(tempfile.mkdtemp(prefix="embedkit-bench-"))
        store = Store(start_embedded(home))
    else:
        store = Store()
    try:
        si = server_info(store.engine)
        print(f"# bench_search: {platform.machine()}, {os.cpu_count()} cores, PostgreSQL {si.postgres}, "
              f"pgvector {si.pgvector}, {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
        if not args.scale_only:
            if args.random_centres:
                c = np.random.default_rng(1).standard_normal((196, 384)).astype(np.float32)
                centres = c / np.linalg.norm(c, axis=1, keepdims=True)
            else:
                centres = bench_index(store, args.corpus.resolve())
            embedder = load_embedder(None)[0] if args.embed_queries else None
            bench_search(store, centres, args.chunks, args.queries, args.corpus.resolve(),
                         reuse=args.home is not None, embedder=embedder)
        if args.scale:
            print(f"## At scale: {args.scale:,} chunks per index flavour\n", flush=True)
            kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
            if unknown := [k for k in kinds if k not in KIND_DIMS]:
                ap.error(f"--kinds: unknown flavour {unknown[0]!r}; expected some of {', '.join(KIND_DIMS)}")
            if args.dims and not 1 <= args.dims <= 2000 and "vector" in kinds:
                ap.error(f"--dims {args.dims}: the vector flavour holds 1 to 2000 dimensions")
            by_dim: dict[int, list[str]] = {}
            for kind in kinds:
                by_dim.setdefault(args.dims or KIND_DIMS[kind], []).append(kind)
            for dim, group in by_dim.items():
                bench_scale(store, group, dim, args.scale, args.incremental, args.queries,
                            args.maintenance_work_mem)
    finally:
        store.close()
        if home is not None:
            stop_embedded(home)
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
