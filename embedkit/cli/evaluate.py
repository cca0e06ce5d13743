"""`embedkit eval QRELS QUERIES -c COLLECTION`: retrieval quality on a BEIR-format test set."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("qrels", type=click.Path())
@click.argument("queries", type=click.Path())
@click.option("-c", "--collection", default="default", show_default=True,
              help="Collection holding the corpus, documents stored under their ids (`index --jsonl`).")
@click.option("-m", "--model", default=None, help="Embedding model (default: the one the collection was built with).")
@click.option("--hybrid", "mode", flag_value="hybrid", help="Evaluate hybrid search (BM25 + vector, RRF).")
@click.option("--keyword", "mode", flag_value="keyword", help="Evaluate BM25 keyword search alone.")
@click.option("--vector", "mode", flag_value="vector", default=True, help="Evaluate vector search (the default).")
@click.option("--rrf-k", type=click.FloatRange(0, None), default=60.0, show_default=True,
              help="Reciprocal rank fusion constant of --hybrid.")
@click.option("--candidates", type=click.IntRange(100, 1000), default=100, show_default=True,
              help="Chunks taken from each ranking per query.")
@click.option("--rerank", "rerank_model", default=None, metavar="MODEL",
              help="Re-order each query's first --rerank-top results with this cross-encoder (GGUF path).")
@click.option("--rerank-top", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many results per query --rerank re-orders.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(qrels, queries, collection, model, mode, rrf_k, candidates, rerank_model, rerank_top, as_json) -> None:
    """nDCG@10, recall@100 and MRR@10 of COLLECTION's document-level search for the judged QUERIES.

    QRELS: a BEIR qrels TSV (query-id, corpus-id, score); QUERIES: a BEIR queries.jsonl. Index the corpus
    first with `embedkit index --jsonl corpus.jsonl -c COLLECTION`."""
    from embedkit.search.api import evaluate

    rep = evaluate(qrels, queries, collection=collection, mode=mode, model=model, rrf_k=rrf_k,
                   candidates=candidates, rerank=rerank_model, rerank_top=rerank_top)
    if as_json:
        click.echo(json.dumps({"collection": collection, "mode": mode, **rep.to_json()}))
        return
    click.echo(f"{collection} ({mode}, {rep.queries} queries): nDCG@10 {rep.ndcg_at_10:.4f}  "
               f"recall@100 {rep.recall_at_100:.4f}  MRR@10 {rep.mrr_at_10:.4f}")
