"""`embedkit rerank -m MODEL QUERY < candidates`: score candidate texts for a query with a cross-encoder."""

from __future__ import annotations

import json
import sys

import click


def _candidates(lines: list[str]) -> list[str]:
    """One candidate per line: plain text, or a JSON object with a "text" field (e.g. `search --json` rows)."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                out.append(obj["text"])
                continue
            from embedkit.errors import InputError

            raise InputError(f"stdin line {n}: a JSON line needs a string \"text\" field")
        out.append(line.rstrip("\n"))
    return out


@click.command()
@click.argument("query")
@click.option("-m", "--model", required=True, help="Cross-encoder GGUF (a converted BertForSequenceClassification).")
@click.option("--json", "as_json", is_flag=True, help='Print {"results": [{"index", "score", "text"}, ...]}.')
def command(query: str, model: str, as_json: bool) -> None:
    """Score the candidates on stdin (one text, or one JSON object with "text", per line) for QUERY, best first."""
    from embedkit.embed.reranker import rerank
    from embedkit.errors import InputError

    docs = _candidates(sys.stdin.read().splitlines())
    if not docs:
        raise InputError("no candidates on stdin; expected one text (or JSON object with \"text\") per line")
    scores = rerank(model, query, docs)
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    if as_json:
        click.echo(json.dumps({"results": [{"index": i, "score": scores[i], "text": docs[i]} for i in order]},
                              ensure_ascii=False))
        return
    for i in order:
        one = " ".join(docs[i].split())
        click.echo(f"{scores[i]:9.4f}  [{i}] {one[:150]}")
