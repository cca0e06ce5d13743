"""`embedkit similar PATH|CHUNK_ID`: documents most similar to a document or a chunk."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("target")
@click.option("-k", "k", type=click.IntRange(1, 999), default=10, show_default=True, help="Number of results.")
@click.option("-c", "--collection", default="default", show_default=True, help="Collection to search.")
@click.option("--ef-search", type=click.IntRange(1, 1000), default=None, help="HNSW ef_search for this query.")
@click.option("--json", "as_json", is_flag=True, help='Print {"results": [...]} as one JSON object.')
def command(target, k, collection, ef_search, as_json) -> None:
    """Documents most similar to TARGET (an indexed file's path, or a chunk id), itself excluded."""
    from embedkit.search import results_json, similar

    hits = similar(target, k=k, collection=collection, ef_search=ef_search)
    if as_json:
        click.echo(json.dumps(results_json(hits), ensure_ascii=False))
        return
    if not hits:
        click.echo("no results", err=True)
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>2}. {h.score:.3f}  {h.path}")
