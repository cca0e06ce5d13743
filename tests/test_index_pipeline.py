"""Incremental pipeline with the tiny embedder on the embedded PostgreSQL: unchanged files embed nothing,
edits replace only their chunks, --prune removes deleted files, skipped files have reasons, progress adds up."""

from __future__ import annotations

from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.index import index_paths
from embedkit.store.collections import require_collection


class Progress:
    def __init__(self):
        self.plan, self.n_embedded, self.n_written = None, 0, 0

    def planned(self, files, chunks):
        self.plan = (files, chunks)

    def embedded(self, n):
        self.n_embedded += n

    def written(self, n):
        self.n_written += n


def _rows(store, collection):
    with store.connect() as conn:
        info = require_collection(conn, collection)
        return conn.execute(
            "SELECT d.path, c.id, c.ordinal, c.text FROM chunks c JOIN documents d ON d.collection_id = "
            "c.collection_id AND d.id = c.document_id WHERE c.collection_id = %s ORDER BY 1, 3", (info.id,)
        ).fetchall()


def test_incremental_runs(store, tmp_path, fresh_collection):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(6):
        (root / f"f{i}.md").write_text(f"# File {i}\n\n" + " ".join(f"word{i}x{j}" for j in range(60)) + "\n")
    (root / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    emb = HashEmbedder()
    prog = Progress()
    run = lambda **kw: index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection,  # noqa: E731
                                   chunk_tokens=32, overlap=4, batch_size=3, **kw)
    first = run(progress=prog)
    assert (first.added, first.updated, first.unchanged) == (6, 0, 0)
    assert sorted((p.rsplit("/", 1)[1], r) for p, r in first.skipped) == [("latin.txt", "not UTF-8 text"),
                                                                           ("pic.png", "binary file")]
    assert prog.plan == (6, first.chunks_embedded) and prog.n_embedded == first.chunks_embedded
    assert prog.n_written == 6 and emb.texts_embedded == first.chunks_embedded

    emb.texts_embedded = 0
    second = run()
    assert (second.unchanged, second.chunks_embedded, emb.texts_embedded) == (6, 0, 0)

    before = _rows(store, fresh_collection)
    (root / "f2.md").write_text("# File 2\n\nnew words entirely\n")
    third = run()
    assert (third.updated, third.unchanged, third.added) == (1, 5, 0) and third.chunks_embedded == 1
    after = _rows(store, fresh_collection)
    key = str(root / "f2.md")
    assert [r for r in before if r[0] != key] == [r for r in after if r[0] != key]
    assert [r[3] for r in after if r[0] == key] == ["# File 2\n\nnew words entirely"]

    (root / "f4.md").unlink()
    assert run().removed == 0
    pruned = run(prune=True)
    assert pruned.removed == 1 and pruned.chunks_embedded == 0
    assert str(root / "f4.md") not in {r[0] for r in _rows(store, fresh_collection)}


def test_bulk_load_builds_indexes_at_the_end(store, tmp_path, fresh_collection, monkeypatch):
    import embedkit.index.pipeline as pipeline
    from embedkit.store.collections import drop_vector_indexes, has_vector_indexes

    monkeypatch.setattr(pipeline, "BULK_LOAD_CHUNKS", 5)
    root = tmp_path / "bulk"
    root.mkdir()
    for i in range(4):
        (root / f"b{i}.txt").write_text(" ".join(f"term{i}y{j}" for j in range(80)))
    emb = HashEmbedder()
    rep = index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection, chunk_tokens=32)
    assert rep.added == 4 and rep.chunks_embedded >= 5
    with store.connect() as conn:
        info = require_collection(conn, fresh_collection)
        assert has_vector_indexes(conn, info.id)
        drop_vector_indexes(conn, info.id)  # as if a bulk run was killed before rebuilding them
        assert not has_vector_indexes(conn, info.id)
    again = index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection, chunk_tokens=32)
    assert again.unchanged == 4
    with store.connect() as conn:
        assert has_vector_indexes(conn, info.id)


def test_other_model_refused_then_reembedded(store, tmp_path, fresh_collection):
    import pytest

    from embedkit.errors import CollectionMismatchError
    from embedkit.store.collections import has_vector_indexes

    root = tmp_path / "m"
    root.mkdir()
    for i in range(3):
        (root / f"m{i}.txt").write_text(f"model switch document {i} with a few words")
    small, other = HashEmbedder(dim=64), HashEmbedder(dim=32, name="other-model")
    index_paths(store, [str(root)], small, small.identity(), collection=fresh_collection)
    with pytest.raises(CollectionMismatchError, match="--reembed"):
        index_paths(store, [str(root)], other, other.identity(), collection=fresh_collection)
    rep = index_paths(store, [str(root)], other, other.identity(), collection=fresh_collection, reembed=True)
    assert rep.added == 3 and rep.chunks_embedded == 3
    with store.connect() as conn:
        info = require_collection(conn, fresh_collection)
        assert info.dim == 32 and info.model.model_name == "other-model" and has_vector_indexes(conn, info.id)
        dims = conn.execute("SELECT DISTINCT vector_dims(embedding) FROM chunks WHERE collection_id = %s",
                            (info.id,)).fetchall()
        assert dims == [(32,)]


def test_file_name_that_is_not_utf8_is_skipped_not_fatal(store, tmp_path, fresh_collection):
    """A file named b'caf\\xe9.txt' (Latin-1) ended the whole run in 'internal error (UnicodeEncodeError:
    ... surrogates not allowed)' when its path was sent to PostgreSQL; the other files were not indexed."""
    import os

    root = tmp_path / "docs"
    root.mkdir()
    (root / "ok.txt").write_text("plain words here\n")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"more words\n")
    emb = HashEmbedder()
    report = index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection)
    assert report.added == 1
    assert [(p.rsplit("/", 1)[1], r) for p, r in report.skipped] == [("caf\\xe9.txt", "file name is not UTF-8")]
    assert [r[0].rsplit("/", 1)[1] for r in _rows(store, fresh_collection)] == ["ok.txt"]
