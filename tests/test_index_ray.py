"""Indexing on a real local Ray cluster (started in the test, `ray.init(num_cpus=2)`) into the real embedded
PostgreSQL: the store equals a single-process index of the same input, a driver killed mid-way (SIGKILL)
and rerun finishes the rest, texts and Ray Datasets index like files, and `--ray` without Ray says how to
install it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.index import RayExecutor, index_paths, index_texts
from embedkit.store.collections import require_collection

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'embedkit[ray]')")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for this module; the tests' own embedder travels to actors by value."""
    import store_fixtures

    ray.cloudpickle.register_pickle_by_value(store_fixtures)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}},
             logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(store_fixtures)
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_unreachable_or_malformed_address_is_one_line_not_a_hang(store, fresh_collection):
    """Ray's own client retries an unreachable address for minutes; embedkit says so at once."""
    from embedkit.errors import InputError

    with pytest.raises(InputError, match="expected auto, local, HOST:PORT"):
        RayExecutor("nonsense")
    if ray.is_initialized():
        pytest.skip("Ray already runs in this process")
    emb = HashEmbedder()
    t = time.monotonic()
    with pytest.raises(InputError, match="cannot reach a Ray cluster there"):
        index_paths(store, [EXAMPLES / "README.md"], emb, emb.identity(), collection=fresh_collection,
                    executor=RayExecutor("127.0.0.1:1"))
    assert time.monotonic() - t < 30


@pytest.mark.slow
def test_cli_ray_local_starts_a_cluster_for_the_run(store, fresh_collection, minilm_gguf_path):
    """`embedkit index --ray local` starts Ray on this machine, indexes, stops it; a rerun embeds nothing."""
    import json

    if ray.is_initialized():
        pytest.skip("Ray already runs in this process")
    env = dict(os.environ, EMBEDKIT_DATABASE_URL=store.url,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "embedkit.cli.main", "index", str(EXAMPLES / "corpus" / "readmes"), "-c",
           fresh_collection, "--ray", "local", "--ray-actors", "1", "--ray-batch", "2", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report["added"] == 8 and report["chunks_embedded"] > 8
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout.strip().splitlines()[-1])["unchanged"] == 8


def snapshot(store, collection):
    """Everything a collection holds, in a canonical order: documents and chunks with their vectors."""
    with store.connect() as conn:
        cid = require_collection(conn, collection).id
        docs = conn.execute(
            "SELECT path, content_sha256, size, metadata, n_chunks FROM documents WHERE collection_id = %s "
            "ORDER BY path", (cid,)).fetchall()
        chunks = conn.execute(
            "SELECT d.path, c.ordinal, c.text, c.token_count, c.char_start, c.char_end, c.embedding FROM chunks c "
            "JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id "
            "WHERE c.collection_id = %s ORDER BY 1, 2", (cid,)).fetchall()
    return docs, [r[:-1] for r in chunks], np.stack([r[-1].to_numpy() for r in chunks])


def assert_same_store(store, a, b):
    docs_a, chunks_a, vec_a = snapshot(store, a)
    docs_b, chunks_b, vec_b = snapshot(store, b)
    assert docs_a == docs_b and len(docs_a) > 10
    assert chunks_a == chunks_b
    cos = np.sum(vec_a * vec_b, axis=1) / np.linalg.norm(vec_a, axis=1) / np.linalg.norm(vec_b, axis=1)
    assert cos.min() >= 1 - 1e-6


def single(store, collection, emb):
    return index_paths(store, [EXAMPLES], emb, emb.identity(), collection=collection, chunk_tokens=48, overlap=8)


def test_ray_index_equals_single_process(store, ray_cluster, fresh_collection):
    emb = HashEmbedder()
    ref = single(store, fresh_collection + "_ref", emb)
    done = []

    class Progress:
        def planned(self, files, chunks):
            done.append(("planned", files, chunks))

        def embedded(self, n):
            done.append(("embedded", n))

        def written(self, n):
            done.append(("written", n))

    executor = RayExecutor(actors=2, batch_docs=3)
    rep = index_paths(store, [EXAMPLES], emb, emb.identity(), collection=fresh_collection, chunk_tokens=48,
                      overlap=8, executor=executor, progress=Progress())
    assert (rep.added, rep.chunks_embedded, sorted(rep.skipped)) == (ref.added, ref.chunks_embedded,
                                                                      sorted(ref.skipped))
    assert done[0] == ("planned", ref.added, None)
    assert sum(x[1] for x in done if x[0] == "embedded") == ref.chunks_embedded
    assert sum(x[1] for x in done if x[0] == "written") == ref.added
    assert_same_store(store, fresh_collection + "_ref", fresh_collection)
    emb.texts_embedded = 0
    again = index_paths(store, [EXAMPLES], emb, emb.identity(), collection=fresh_collection, executor=executor)
    assert (again.unchanged, again.added, again.chunks_embedded) == (ref.added, 0, 0)


KILLED_DRIVER = textwrap.dedent('''
    import sys, time
    import ray
    import store_fixtures
    from store_fixtures import HashEmbedder
    from embedkit.index import RayExecutor, index_paths
    from embedkit.store import Store

    class SlowEmbedder(HashEmbedder):
        def embed(self, texts, batch_size=32, progress=None):
            time.sleep(0.3)
            return super().embed(texts, batch_size, progress)

    ray.cloudpickle.register_pickle_by_value(store_fixtures)
    url, address, examples, collection = sys.argv[1:]
    ray.init(address=address, logging_level="WARNING")
    emb = SlowEmbedder()
    index_paths(Store(url), [examples], emb, emb.identity(), collection=collection, chunk_tokens=48, overlap=8,
                executor=RayExecutor(actors=1, batch_docs=1))
''')


def _count_docs(store, collection):
    with store.connect() as conn:
        row = conn.execute("SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
                           "WHERE c.name = %s", (collection,)).fetchone()
    return row[0]


def test_killed_driver_rerun_finishes_the_rest(store, ray_cluster, fresh_collection, tmp_path):
    emb = HashEmbedder()
    ref = single(store, fresh_collection + "_ref", emb)
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.Popen([sys.executable, str(script), store.url, ray_cluster, str(EXAMPLES), fresh_collection],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            n = _count_docs(store, fresh_collection)
            if n >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = _count_docs(store, fresh_collection)
    assert 3 <= killed_at < ref.added
    with store.connect() as conn:  # every stored document is whole
        half = conn.execute("SELECT count(*) FROM documents d WHERE n_chunks <> (SELECT count(*) FROM chunks c "
                            "WHERE c.collection_id = d.collection_id AND c.document_id = d.id)").fetchone()[0]
    assert half == 0
    rerun = index_paths(store, [EXAMPLES], emb, emb.identity(), collection=fresh_collection,
                        executor=RayExecutor(actors=2, batch_docs=2))
    assert rerun.unchanged == killed_at and rerun.added == ref.added - killed_at
    assert_same_store(store, fresh_collection + "_ref", fresh_collection)


def _texts():
    rng = np.random.default_rng(24)
    words = [f"w{i}" for i in range(300)]
    return [(f"row/{i}", ". ".join(" ".join(rng.choice(words, 12)) for _ in range(int(rng.integers(1, 30)))),
             {"row": i}) for i in range(40)]


def test_texts_and_dataset_on_ray_equal_single_process(store, ray_cluster, fresh_collection):
    emb = HashEmbedder()
    items = _texts()
    kw = dict(store=store, embedder=emb, model="hash-embedder", chunk_tokens=40, overlap=8)
    ref = index_texts(items, collection=fresh_collection + "_ref", **kw)
    assert ref.added == 40
    on_ray = index_texts(iter(items), collection=fresh_collection + "_it",
                         executor=RayExecutor(actors=2, batch_docs=4), **kw)
    assert on_ray.added == 40 and on_ray.chunks_embedded == ref.chunks_embedded
    assert_same_store(store, fresh_collection + "_ref", fresh_collection + "_it")

    ds = ray.data.from_items([{"key": k, "text": t, "metadata": m} for k, t, m in items[:25]])
    first = index_texts(ds, collection=fresh_collection + "_ds", executor=RayExecutor(actors=1, batch_docs=8), **kw)
    assert first.added == 25
    ds = ray.data.from_items([{"key": k, "text": t, "metadata": m} for k, t, m in items])
    second = index_texts(ds, collection=fresh_collection + "_ds", executor=RayExecutor(actors=2, batch_docs=8),
                         **kw)
    assert (second.unchanged, second.added) == (25, 15)
    assert_same_store(store, fresh_collection + "_ref", fresh_collection + "_ds")


def test_ray_flag_without_ray_says_how_to_install(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from embedkit.cli.main import main; sys.argv[0] = 'embedkit'; main()"
    env = dict(os.environ, EMBEDKIT_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code, "index", str(EXAMPLES), "--ray", "local"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'embedkit[ray]'" in lines[0], out.stderr
    assert not (tmp_path / "pgdata").exists()  # said before starting a database


@pytest.mark.slow
def test_real_model_on_ray_actors_equals_single_process(store, ray_cluster, fresh_collection, minilm_gguf_path):
    """all-MiniLM-L6-v2 loaded once per actor (by catalog name, on the worker): same chunks, vectors within
    cosine 1e-6 of the single-process index."""
    from embedkit.index import index

    ref = index([EXAMPLES], collection=fresh_collection + "_ref", store=store)
    rep = index([EXAMPLES], collection=fresh_collection, store=store, executor=RayExecutor(actors=2, batch_docs=4))
    assert (rep.added, rep.chunks_embedded) == (ref.added, ref.chunks_embedded)
    assert_same_store(store, fresh_collection + "_ref", fresh_collection)



def _failing_loader():
    from embedkit.errors import ModelNotFoundError

    raise ModelNotFoundError("no model file /models/x.gguf on this node")


def test_worker_that_cannot_load_the_model_stops_the_run_in_one_line(store, ray_cluster, fresh_collection):
    from embedkit.errors import EmbedkitError

    emb = HashEmbedder()
    with pytest.raises(EmbedkitError, match="no model file /models/x.gguf on this node") as e:
        index_paths(store, [EXAMPLES], emb, emb.identity(), collection=fresh_collection,
                    executor=RayExecutor(actors=1, loader=_failing_loader))
    assert "\n" not in str(e.value)
    assert _count_docs(store, fresh_collection) == 0
