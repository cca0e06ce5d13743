"""BEIR-format corpora: indexing a corpus.jsonl by `_id` (incrementally), and `evaluate` over it on the
embedded PostgreSQL with the tiny deterministic embedder."""

from __future__ import annotations

import json

import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.errors import InputError
from embedkit.index.jsonl import index_jsonl_documents
from embedkit.search import search
from embedkit.search.api import evaluate

DOCS = {
    "d1": ("Volcanoes", "Magma rises through the crust and erupts as lava from volcanoes."),
    "d2": ("Glaciers", "Glaciers carve valleys as the ice slowly flows downhill."),
    "d3": ("Deserts", "Deserts receive little rain; dunes move with the wind."),
    "d4": ("", "Coral reefs grow in warm shallow seas."),
}


def _write(folder, docs, queries, qrels):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, judged in qrels.items() for d, r in judged.items()))


def test_index_jsonl_is_incremental_and_keyed_by_id(store, tmp_path, fresh_collection):
    emb = HashEmbedder()
    _write(tmp_path, DOCS, {}, {})
    rep = index_jsonl_documents(store, tmp_path / "corpus.jsonl", emb, emb.identity(), collection=fresh_collection)
    assert (rep.added, rep.unchanged) == (4, 0)
    hits = search("lava magma", k=2, collection=fresh_collection, store=store, keyword=True)
    assert hits[0].path == "d1" and hits[0].text.startswith("Volcanoes")
    changed = dict(DOCS, d2=("Glaciers", "Ice sheets and moraines."))
    del changed["d3"]
    _write(tmp_path, changed, {}, {})
    before = emb.texts_embedded
    rep = index_jsonl_documents(store, tmp_path / "corpus.jsonl", emb, emb.identity(), collection=fresh_collection,
                                prune=True)
    assert (rep.added, rep.updated, rep.unchanged, rep.removed) == (0, 1, 2, 1)
    assert emb.texts_embedded - before == 1  # only the changed document
    assert search("dunes", k=2, collection=fresh_collection, store=store, keyword=True) == []


def test_index_jsonl_refuses_bad_lines(store, tmp_path, fresh_collection):
    emb = HashEmbedder()
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "fine"}\n{"title": "no id"}\n')
    with pytest.raises(InputError, match="c.jsonl:2"):
        index_jsonl_documents(store, tmp_path / "c.jsonl", emb, emb.identity(), collection=fresh_collection)


def test_evaluate_modes(store, tmp_path, fresh_collection):
    emb = HashEmbedder()
    queries = {"q1": "lava erupts", "q2": "valleys carved by ice", "q3": "unjudged query"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2, "d4": 0}}
    _write(tmp_path, DOCS, queries, qrels)
    index_jsonl_documents(store, tmp_path / "corpus.jsonl", emb, emb.identity(), collection=fresh_collection)
    for mode in ("keyword", "vector", "hybrid"):
        rep = evaluate(tmp_path / "qrels.tsv", tmp_path / "queries.jsonl", collection=fresh_collection, mode=mode,
                       store=store, embedder=emb)
        assert rep.queries == 2
        assert rep.recall_at_100 == 1.0  # four documents, all returned
        if mode != "vector":
            assert rep.ndcg_at_10 == pytest.approx(1.0) and rep.mrr_at_10 == 1.0
    with pytest.raises(InputError, match="mode"):
        evaluate(tmp_path / "qrels.tsv", tmp_path / "queries.jsonl", collection=fresh_collection, mode="bogus",
                 store=store, embedder=emb)


def test_files_that_are_not_utf8_are_input_errors(store, tmp_path, fresh_collection):
    from embedkit.search.evaluation import read_qrels, read_queries

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"_id": "a", "text": "caf\xe9"}\n')
    emb = HashEmbedder()
    with pytest.raises(InputError, match="not UTF-8"):
        index_jsonl_documents(store, bad, emb, emb.identity(), collection=fresh_collection)
    with pytest.raises(InputError, match="not UTF-8"):
        read_queries(bad)
    with pytest.raises(InputError, match="not UTF-8"):
        read_qrels(bad)
