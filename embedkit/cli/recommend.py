"""`embedkit recommend -p TARGET [-n TARGET]`: documents like some examples and unlike others."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("-p", "--positive", multiple=True, required=True, metavar="PATH|CHUNK_ID",
              help="An example to be like: an indexed file's path or a chunk id (repeatable).")
@click.option("-n", "--negative", multiple=True, metavar="PATH|CHUNK_ID",
              help="An example to be unlike (repeatable).")
@click.option("-k", "k", type=click.IntRange(1, 999), default=10, show_default=True, help="Number of results.")
@click.option("-c", "--collection", default="default", show_default=True, help="Collection to search.")
@click.option("--ef-search", type=click.IntRange(1, 1000), default=None, help="HNSW ef_search for this query.")
@click.option("--json", "as_json", is_flag=True, help='Print {"results": [...]} as one JSON object.')
def command(positive, negative, k, collection, ef_search, as_json) -> None:
    """Documents like the POSITIVE examples and unlike the NEGATIVE ones (Qdrant's average-vector strategy:
    query = 2·mean(positive) − mean(negative)), the examples' documents excluded."""
    from embedkit.search import recommend, results_json

    hits = recommend(list(positive), list(negative), k=k, collection=collection, ef_search=ef_search)
    if as_json:
        click.echo(json.dumps(results_json(hits), ensure_ascii=False))
        return
    if not hits:
        click.echo("no results", err=True)
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>2}. {h.score:.3f}  {h.path}")
