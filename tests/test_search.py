"""Search plumbing on the embedded PostgreSQL with a tiny deterministic embedder: ranking, filters with
iterative HNSW scans, hybrid RRF, similar, and SQL metacharacters everywhere user text goes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.errors import InputError, StoreError
from embedkit.index import index_paths
from embedkit.search import search, search_vector, similar
from embedkit.search.sql import glob_to_like, path_matches
from embedkit.store.collections import require_collection

WORDS = "river mountain forest ocean desert valley glacier canyon meadow island volcano prairie".split()
EVIL = ["'; DROP TABLE chunks; --", "%", "_", "\\", "\"", "$$ $1 %(q)s :name ?", "\x01", "ü'\"\\%_*?"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small documents: `common/` has 36, `rare/` has 4 (selective filter), one with an evil name."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(99)
    for i in range(40):
        folder = "rare" if i % 10 == 0 else "common"
        topic = WORDS[i % len(WORDS)]
        paras = [" ".join([topic] * 3 + rng.sample(WORDS, 5)) + f" document{i}." for _ in range(6)]
        (root / folder).mkdir(exist_ok=True)
        (root / folder / f"doc{i:02d}.md").write_text(f"# {topic} {i}\n\n" + "\n\n".join(paras))
    (root / "common" / "it's 100% _odd_.md").write_text("# odd\n\nzanzibar quokka unique words here.")
    return root


@pytest.fixture(scope="module")
def indexed(store, corpus):
    emb = HashEmbedder()
    rep = index_paths(store, [str(corpus)], emb, emb.identity(), collection="search-tests", chunk_tokens=24,
                      overlap=4)
    assert rep.added == 41 and rep.skipped == []
    with store.connect() as conn:
        info = require_collection(conn, "search-tests")
    return emb, info, str(corpus)


def test_search_ranks_topic_documents_first(store, indexed):
    emb, info, root = indexed
    hits = search("glacier glacier glacier", k=5, collection="search-tests", store=store, embedder=emb)
    assert len(hits) == 5
    assert all("# glacier" in h.text or "glacier" in h.text for h in hits[:3])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].path.startswith(root)


def test_index_is_used_for_unfiltered_query(store, indexed):
    emb, info, _ = indexed
    with store.connect() as conn:
        conn.execute("ANALYZE chunks")
        conn.execute("SET enable_sort = off")  # tiny table: make the planner show the index is usable
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT id FROM chunks c WHERE c.collection_id = {info.id} "
            f"ORDER BY c.embedding::vector({info.dim}) <=> %s::vector({info.dim}) LIMIT 5",
            (emb.embed(["river"])[0],)))
        conn.execute("RESET enable_sort")
    assert f"chunks_hnsw_c{info.id}" in plan


def test_selective_filter_returns_k_rows(store, indexed):
    emb, info, root = indexed
    q = emb.embed(["ocean desert"])[0]
    with store.connect() as conn:
        n_rare = conn.execute(
            "SELECT count(*) FROM chunks c JOIN documents d ON d.collection_id = c.collection_id "
            "AND d.id = c.document_id WHERE c.collection_id = %s AND d.path LIKE %s", (info.id, root + "/rare/%")
        ).fetchone()[0]
        assert n_rare >= 10
        # a tiny ef_search would stop a plain HNSW scan early; the iterative scan keeps going
        hits = search_vector(conn, info, q, k=10, path_glob=root + "/rare", ef_search=10)
    assert len(hits) == 10 and all(h.path.startswith(root + "/rare/") for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_metadata_filter_and_min_score(store, indexed):
    emb, info, root = indexed
    with store.connect() as conn:
        hits = search_vector(conn, info, emb.embed(["odd"])[0], k=3, metadata={"title": "odd"})
        assert [h.path for h in hits][:1] == [root + "/common/it's 100% _odd_.md"]
        all_hits = search_vector(conn, info, emb.embed(["river"])[0], k=20)
        cut = all_hits[5].score
        assert all(h.score >= cut for h in search_vector(conn, info, emb.embed(["river"])[0], k=20, min_score=cut))


def test_path_glob_semantics():
    assert glob_to_like("docs/*.md") == "docs/%.md"
    assert glob_to_like("a_b%?") == "a\\_b\\%_"
    assert path_matches("docs/x/y.md", "docs") and not path_matches("docsx/y.md", "docs")
    with pytest.raises(InputError):
        glob_to_like("[ab]*")


def test_hybrid_finds_lexical_match(store, indexed):
    emb, info, root = indexed
    hits = search("zanzibar quokka", k=5, collection="search-tests", store=store, embedder=emb, hybrid=True)
    assert hits[0].path.endswith("_odd_.md")
    assert hits[0].score > hits[-1].score


def test_hybrid_keyword_half_runs_while_the_query_vector_is_made(store, indexed):
    """search_hybrid takes a function for the query vector (search embeds the query in it): called once, after
    the keyword half started on its own connection, with the same results as a ready vector, on one connection
    or two."""
    from embedkit.search import search_hybrid

    emb, info, _ = indexed
    qvec = emb.embed(["glacier canyon river"])[0]
    calls = []

    def vector():
        calls.append(1)
        return qvec

    with store.connect() as conn, store.connect() as conn2:
        for documents in (False, True):
            want = search_hybrid(conn, info, qvec, "glacier canyon river", k=5, documents=documents)
            assert want
            assert search_hybrid(conn, info, vector, "glacier canyon river", k=5, documents=documents,
                                 keyword_conn=conn2) == want
            assert search_hybrid(conn, info, vector, "glacier canyon river", k=5, documents=documents) == want
    assert len(calls) == 4
    assert search("glacier canyon river", k=5, collection="search-tests", store=store, embedder=emb,
                  hybrid=True) == want


def test_hybrid_vector_half_takes_the_index_order(store, indexed):
    """The vector half of hybrid reads ranks from the HNSW index's own order, without computing distances again
    from the stored embeddings: the same chunks in the same order as the scored vector search (up to ties),
    through the index."""
    from embedkit.search.query import vector_chunks

    emb, info, _ = indexed
    assert info.index_kind == "vector"
    with store.connect() as conn:
        conn.execute("ANALYZE chunks")
        for text in ("glacier canyon river", "ocean", "zanzibar quokka", "meadow island volcano prairie"):
            qvec = emb.embed([text])[0]
            scored = vector_chunks(conn, info, qvec, 20, None, None, None)
            conn.execute("SET enable_sort = off")  # tiny table: the planner would sort it instead of the index
            ranked = vector_chunks(conn, info, qvec, 20, None, None, None, ranks_only=True)
            conn.execute("RESET enable_sort")
            assert len(scored) == 20
            exact = {h.chunk_id: h.score for h in vector_chunks(conn, info, qvec, 1000, None, None, None)}
            # the same order up to ties (chunks at the same distance, up to float rounding, in the index's order)
            assert [exact[h.chunk_id] for h in ranked] == pytest.approx([h.score for h in scored], abs=1e-6)
            by_id = {h.chunk_id: (h.path, h.text, h.document_id) for h in scored}
            assert all((h.path, h.text, h.document_id) == by_id[h.chunk_id] for h in ranked if h.chunk_id in by_id)
            assert {h.score for h in ranked} == {0.0}
            # a filter keeps the exact distances (iterative scans may return rows out of order)
            filtered = vector_chunks(conn, info, qvec, 5, "*/rare/*", None, None, ranks_only=True)
            assert filtered and all(h.score > 0 for h in filtered)
        conn.execute("SET enable_sort = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN " + query_sql_ranks(info), {"q": qvec, "n": 20}).fetchall())
        conn.execute("RESET enable_sort")
    assert f"chunks_hnsw_c{int(info.id)}" in plan


def query_sql_ranks(info) -> str:
    from embedkit.search.query import _vector_ranks_sql

    return _vector_ranks_sql(info, "n")


def test_similar_excludes_itself(store, indexed):
    emb, info, root = indexed
    src = root + "/common/doc01.md"
    hits = similar(src, k=5, collection="search-tests", store=store)
    assert len(hits) == 5 and src not in [h.path for h in hits]
    # documents on the same topic (doc13, doc25, doc37 share WORDS[1]) rank first
    assert hits[0].path.endswith(("doc13.md", "doc25.md", "doc37.md"))
    with store.connect() as conn:
        chunk_id, doc_id = conn.execute(
            "SELECT c.id, c.document_id FROM chunks c JOIN documents d ON d.collection_id = c.collection_id "
            "AND d.id = c.document_id WHERE d.path = %s ORDER BY c.ordinal LIMIT 1", (src,)).fetchone()
    by_chunk = similar(str(chunk_id), k=3, collection="search-tests", store=store)
    assert len(by_chunk) == 3 and doc_id not in [h.document_id for h in by_chunk]


def test_sql_metacharacters_are_harmless(store, indexed):
    emb, info, root = indexed
    for evil in EVIL:
        search(evil, k=3, collection="search-tests", store=store, embedder=emb)
        search(evil, k=3, collection="search-tests", store=store, embedder=emb, hybrid=True)
        assert search("river", k=3, collection="search-tests", store=store, embedder=emb, path_glob=evil) == []
        with store.connect() as conn:
            assert search_vector(conn, info, emb.embed(["x"])[0], k=3, metadata={evil: evil}) == []
        # a name no collection can have (control characters, too long) is refused before the lookup
        with pytest.raises((StoreError, InputError), match="no collection named|collection name"):
            search("river", collection=evil, store=store, embedder=emb)
        with pytest.raises(InputError):
            similar(evil, collection="search-tests", store=store)
    odd = search("river", k=50, collection="search-tests", store=store, embedder=emb,
                 path_glob=root + "/common/it's 100% _odd_.md")
    assert {h.path for h in odd} == {root + "/common/it's 100% _odd_.md"}
    with store.connect() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()[0] > 0


def test_recall_against_exact(store, indexed):
    emb, info, _ = indexed
    rng = np.random.default_rng(3)
    with store.connect() as conn:
        for _ in range(5):
            q = rng.standard_normal(info.dim).astype(np.float32)
            got = [h.chunk_id for h in search_vector(conn, info, q, k=10)]
            exact = [r[0] for r in conn.execute(
                "SELECT id FROM chunks WHERE collection_id = %s ORDER BY embedding <=> %s::vector LIMIT 10",
                (info.id, q))]
            assert len(set(got) & set(exact)) >= 9


@pytest.mark.parametrize("dim", [2500, 4500])
def test_large_dimensions_halfvec_and_binary_quantized(store, corpus, dim):
    emb = HashEmbedder(dim=dim, name=f"hash-{dim}")
    rep = index_paths(store, [str(corpus / "rare")], emb, emb.identity(), collection=f"big-{dim}",
                      chunk_tokens=24, overlap=0)
    assert rep.added == 4
    with store.connect() as conn:
        info = require_collection(conn, f"big-{dim}")
        assert info.index_kind == ("halfvec" if dim <= 4000 else "bit")
        conn.execute("SET enable_sort = off")
        for doc in ("doc10", "doc20"):
            q = emb.embed([(corpus / "rare" / f"{doc}.md").read_text().split("\n\n")[1]])[0]
            hits = search_vector(conn, info, q, k=3)
            assert hits[0].path.endswith(f"{doc}.md") and hits[0].score > 0.9
        conn.execute("RESET enable_sort")
    assert similar(str(corpus / "rare" / "doc10.md"), k=2, collection=f"big-{dim}", store=store)


def test_vector_search_in_one_round_trip_leaves_the_connection_clean(store, indexed):
    """The vector query's pipeline (BEGIN, SET LOCAL, query, COMMIT) leaves no transaction or setting behind,
    after a result and after an error inside it."""
    from embedkit.search.query import vector_chunks

    emb, info, root = indexed
    qvec = emb.embed(["glacier"])[0]
    with store.connect() as conn:
        before = conn.execute("SHOW hnsw.ef_search").fetchone()[0]
        hits = vector_chunks(conn, info, qvec, 5, root + "/rare", None, 10)  # iterative scan set for the filter
        assert len(hits) == 5 and all(h.path.startswith(root + "/rare/") for h in hits)
        with pytest.raises(InputError):
            vector_chunks(conn, info, qvec, 5, None, None, 5000)  # ef_search past pgvector's cap
        with pytest.raises(Exception, match="dimensions"):
            vector_chunks(conn, info, np.ones(3, dtype=np.float32), 5, None, None, None)
        assert conn.info.transaction_status == conn.info.transaction_status.IDLE
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == before
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "off"
        assert [h.chunk_id for h in vector_chunks(conn, info, qvec, 5, None, None, None)] == \
            [h.chunk_id for h in search_vector(conn, info, qvec, k=5)]
