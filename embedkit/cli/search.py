"""`embedkit search "query"`: ranked chunks of a collection."""

from __future__ import annotations

import json

import click


def snippet(text: str, width: int = 160) -> str:
    """The chunk's text on one line, cut to `width` characters."""
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


@click.command()
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Number of results.")
@click.option("-c", "--collection", default="default", show_default=True, help="Collection to search.")
@click.option("-m", "--model", default=None, help="Embedding model (default: the one the collection was built with).")
@click.option("--path", "path_glob", default=None, metavar="GLOB",
              help="Only documents whose path matches (a folder or a glob with * and ?).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Only documents whose metadata has KEY=VALUE.")
@click.option("--min-score", type=float, default=None,
              help="Drop results below this cosine similarity, in [-1, 1] (not with --hybrid).")
@click.option("--hybrid", is_flag=True, help="Fuse BM25 keyword and vector rankings (reciprocal rank fusion).")
@click.option("--keyword", is_flag=True, help="BM25 keyword ranking alone (no embedding model needed).")
@click.option("--chunks", "chunk_level", is_flag=True,
              help="List the best chunks instead of the best documents (each shown by its best chunk).")
@click.option("--rrf-k", type=click.FloatRange(0, None), default=60.0, show_default=True,
              help="Reciprocal rank fusion constant of --hybrid: score = sum of 1 / (rrf_k + rank).")
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Most chunks taken from each ranking (4 per result) before fusing (--hybrid); grouping one "
                   "ranking by document starts with as many and fetches more if they hold too few documents.")
@click.option("--rerank", "rerank_model", default=None, metavar="MODEL",
              help="Re-order the first --rerank-top results with this cross-encoder (GGUF path).")
@click.option("--rerank-top", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many results --rerank re-orders.")
@click.option("--ef-search", type=click.IntRange(1, 1000), default=None, help="HNSW ef_search for this query.")
@click.option("--json", "as_json", is_flag=True, help='Print {"results": [...]} as one JSON object.')
def command(query, k, collection, model, path_glob, meta, min_score, hybrid, keyword, chunk_level, rrf_k, candidates,
            rerank_model, rerank_top, ef_search, as_json) -> None:
    """Search COLLECTION for the documents (or chunks) best matching QUERY."""
    from embedkit.search import results_json, search
    from embedkit.search.sql import parse_metadata_filters

    hits = search(query, k=k, collection=collection, model=model, path_glob=path_glob,
                  metadata=parse_metadata_filters(meta) or None, min_score=min_score, hybrid=hybrid,
                  ef_search=ef_search, keyword=keyword, chunks=chunk_level, rrf_k=rrf_k, candidates=candidates,
                  rerank=rerank_model, rerank_top=rerank_top)
    if as_json:
        click.echo(json.dumps(results_json(hits), ensure_ascii=False))
        return
    if not hits:
        click.echo("no results", err=True)
        return
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>2}. {h.score:.3f}  {h.path}  (chunk {h.chunk_id})")
        click.echo(f"    {snippet(h.text)}")
