"""`embedkit models`: the known models and which of them are installed."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def command(as_json: bool) -> None:
    """List known models (default ones marked *) and whether they are installed."""
    from embedkit.catalog import DEFAULT_MODELS, KNOWN_MODELS, installed_path

    defaults = set(DEFAULT_MODELS.values())
    rows = []
    for name, m in KNOWN_MODELS.items():
        path = installed_path(name)
        rows.append({"name": name, "kind": m.kind, "default": name in defaults, "installed": path is not None,
                     "path": str(path) if path else None, "description": m.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) + 1
    for r in rows:
        mark = "*" if r["default"] else " "
        where = r["path"] if r["installed"] else "not installed (fetched on first use)"
        click.echo(f"{mark}{r['name']:<{width}} {r['kind']:<8} {r['description']}\n{'':<{width + 1}} {where}")
