"""`embedkit db status|url|stop|upgrade|collections|drop`: the database behind the store."""

from __future__ import annotations

import json
import os

import click


def _home():
    from embedkit.paths import embedkit_home

    return embedkit_home()


@click.group()
def group() -> None:
    """Manage the database (the embedded server under EMBEDKIT_HOME, or EMBEDKIT_DATABASE_URL)."""


@group.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Where the database is, whether it runs, versions, and collections."""
    from embedkit.store import Store
    from embedkit.store.collections import list_collections
    from embedkit.store.engine import server_info
    from embedkit.store.server import embedded_status

    out: dict = {"external": bool(os.environ.get("EMBEDKIT_DATABASE_URL"))}
    if not out["external"]:
        st = embedded_status(_home())
        out.update(pgdata=str(st.pgdata), running=st.running, pid=st.pid)
    if out["external"] or out.get("running"):
        with Store() as store:
            info = server_info(store.engine)
            out.update(url=store.psql_url, postgres=info.postgres, pgvector=info.pgvector, schema=info.revision)
            with store.connect() as conn:
                out["collections"] = [
                    {"name": c.name, "model": c.model.model_name, "dim": c.dim, "index": c.index_kind,
                     "documents": nd, "chunks": nc}
                    for c, nd, nc in list_collections(conn)
                ]
    if as_json:
        click.echo(json.dumps(out))
        return
    if not out["external"]:
        state = f"running (pid {out['pid']})" if out["running"] else "stopped (starts on the next command)"
        click.echo(f"embedded PostgreSQL in {out['pgdata']}: {state}")
    if "url" in out:
        click.echo(f"url: {out['url']}")
        click.echo(f"PostgreSQL {out['postgres']}, pgvector {out['pgvector']}, schema revision {out['schema']}")
        for c in out["collections"]:
            click.echo(f"  {c['name']}: {c['documents']} documents, {c['chunks']} chunks, {c['model']} "
                       f"({c['dim']} dims, {c['index']} HNSW)")


@group.command()
def url() -> None:
    """Print a psql-ready URL of the database (starts the embedded server if needed)."""
    from embedkit.store.engine import database_url, psql_url

    click.echo(psql_url(database_url()))


@group.command()
def stop() -> None:
    """Stop the embedded server (it restarts on demand)."""
    from embedkit.store.server import stop_embedded

    if os.environ.get("EMBEDKIT_DATABASE_URL"):
        click.echo("EMBEDKIT_DATABASE_URL is set: embedkit does not manage that server", err=True)
        return
    click.echo("stopped" if stop_embedded(_home()) else "not running")


@group.command()
def upgrade() -> None:
    """Apply the schema migrations (also done automatically on first use)."""
    from embedkit.store import Store
    from embedkit.store.engine import server_info

    with Store() as store:
        click.echo(f"schema at revision {server_info(store.engine).revision}")


@group.command()
@click.argument("name")
def drop(name: str) -> None:
    """Delete collection NAME with its documents and chunks."""
    from embedkit.errors import InputError
    from embedkit.store import Store
    from embedkit.store.collections import display_name, drop_collection

    with Store() as store, store.connect() as conn:
        if not drop_collection(conn, name):
            raise InputError(f"no collection named {display_name(name)}")
    click.echo(f"dropped {name}")
