"""BM25 keyword search in SQL on the embedded PostgreSQL: the statistics the triggers keep stay exact through
incremental indexing, the scores match a reference BM25 (rank_bm25 with Lucene's idf) on the same lexemes,
and the keyword SQL uses the GIN index."""

from __future__ import annotations

import math
import random

import numpy as np
from rank_bm25 import BM25Okapi
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.index import index_paths
from embedkit.search import search
from embedkit.search.keyword import BM25_B, BM25_K1, keyword_ids_sql, keyword_scores, query_terms
from embedkit.store.collections import ensure_collection, require_collection
from embedkit.store.writes import ChunkRecord, DocumentRecord, write_document

VOCAB = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud maple cedar "
         "harbor lantern copper violet").split()


def _write_tree(root, docs: dict[str, str]) -> None:
    for name, text in docs.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _random_docs(rng: random.Random, n: int, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}d{i:02d}.txt": " ".join(rng.choices(VOCAB, k=rng.randint(5, 60))) for i in range(n)}


def _stats(conn, cid: int) -> tuple[tuple, dict[str, int], dict[str, int]]:
    totals = conn.execute("SELECT chunks, tokens FROM keyword_stats WHERE collection_id = %s", (cid,)).fetchone()
    terms = dict(conn.execute("SELECT term, chunks FROM keyword_terms WHERE collection_id = %s", (cid,)).fetchall())
    impacts = dict(conn.execute("SELECT term || ' ' || tf || ' ' || lenb, chunks FROM keyword_impacts "
                                "WHERE collection_id = %s", (cid,)).fetchall())
    return tuple(totals) if totals else (0, 0), terms, impacts


def _recomputed(conn, cid: int) -> tuple[tuple, dict[str, int], dict[str, int]]:
    """The statistics computed from scratch from the chunks themselves (the impact keys by the function of the
    GIN index)."""
    totals = conn.execute(
        "SELECT count(*), coalesce(sum(embedkit_tsv_length(tsv)), 0) FROM chunks WHERE collection_id = %s", (cid,)
    ).fetchone()
    terms = dict(conn.execute(
        "SELECT u.lexeme, count(*) FROM chunks c, unnest(c.tsv) u WHERE c.collection_id = %s GROUP BY 1", (cid,)
    ).fetchall())
    impacts = dict(conn.execute(
        "SELECT k, count(*) FROM chunks c, unnest(embedkit_impact_keys(c.tsv)) k WHERE c.collection_id = %s "
        "GROUP BY 1", (cid,)).fetchall())
    return tuple(totals), terms, impacts


def test_incremental_indexing_keeps_statistics_exact(store, tmp_path, fresh_collection):
    rng = random.Random(7)
    root = tmp_path / "tree"
    docs = _random_docs(rng, 30)
    docs.update(_random_docs(rng, 5, "sub/"))
    _write_tree(root, docs)
    emb = HashEmbedder()
    index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection, chunk_tokens=16, overlap=2)
    # change some, delete some, add some
    for name in list(docs)[:8]:
        docs[name] = " ".join(rng.choices(VOCAB, k=rng.randint(5, 60))) + " newword"
    for name in list(docs)[8:14]:
        (root / name).unlink()
        del docs[name]
    extra = _random_docs(rng, 4, "extra/")
    docs.update(extra)
    _write_tree(root, docs)
    rep = index_paths(store, [str(root)], emb, emb.identity(), collection=fresh_collection, prune=True,
                      chunk_tokens=16, overlap=2)
    assert (rep.updated, rep.removed, rep.added) == (8, 6, 4)

    fresh = fresh_collection + "_fresh"
    index_paths(store, [str(root)], emb, emb.identity(), collection=fresh, chunk_tokens=16, overlap=2)
    with store.connect() as conn:
        # the indexer leaves both keyword GIN indexes with empty pending lists (every search reads them whole)
        assert conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin'::regclass), "
                            "gin_clean_pending_list('chunks_impact_gin'::regclass)").fetchone() == (0, 0)
        inc = require_collection(conn, fresh_collection)
        new = require_collection(conn, fresh)
        inc_stats, new_stats = _stats(conn, inc.id), _stats(conn, new.id)
        assert inc_stats == new_stats
        assert inc_stats == _recomputed(conn, inc.id)
        assert "newword" in inc_stats[1]
        assert all(n > 0 for n in inc_stats[1].values())
        # chunk lengths stored by the trigger equal the lengths of the generated tsvectors
        bad = conn.execute(
            "SELECT count(*) FROM chunks WHERE collection_id = %s AND keyword_len <> embedkit_tsv_length(tsv)",
            (inc.id,)).fetchone()[0]
        assert bad == 0
        # deleting every document leaves no statistics behind; deleting the collection removes its rows
        conn.execute("DELETE FROM documents WHERE collection_id = %s", (inc.id,))
        assert _stats(conn, inc.id) == ((0, 0), {}, {})
        conn.execute("DELETE FROM collections WHERE id = %s", (new.id,))
        assert conn.execute("SELECT count(*) FROM keyword_terms WHERE collection_id = %s", (new.id,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM keyword_stats WHERE collection_id = %s", (new.id,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM keyword_impacts WHERE collection_id = %s",
                            (new.id,)).fetchone()[0] == 0


class _LuceneBM25(BM25Okapi):
    """rank_bm25's Okapi BM25 with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5))."""

    def _calc_idf(self, nd):
        for word, freq in nd.items():
            self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


def test_bm25_scores_match_rank_bm25(store, tmp_path, fresh_collection):
    rng = random.Random(11)
    docs = _random_docs(rng, 40)
    _write_tree(tmp_path, docs)
    emb = HashEmbedder()
    # chunks large enough that each document is one chunk
    index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=fresh_collection, chunk_tokens=120,
                overlap=0)
    with store.connect() as conn:
        info = require_collection(conn, fresh_collection)
        rows = conn.execute(
            "SELECT c.id, c.tsv::text FROM chunks c WHERE c.collection_id = %s ORDER BY c.id", (info.id,)
        ).fetchall()
        ids = [r[0] for r in rows]
        # the same lexemes, with their repetitions, as Postgres indexed them
        corpus = []
        for cid in ids:
            lex = conn.execute("SELECT u.lexeme, array_length(u.positions, 1) FROM chunks c, unnest(c.tsv) u "
                               "WHERE c.collection_id = %s AND c.id = %s", (info.id, cid)).fetchall()
            corpus.append([w for w, n in lex for _ in range(n)])
        ref = _LuceneBM25(corpus, k1=BM25_K1, b=BM25_B)
        for query in ("river stone", "alpha alpha omega", "copper violet lantern harbor", "zeta",
                      "alpha beta gamma delta epsilon zeta theta kappa maple cedar"):
            qlex = [w for w, n in conn.execute(
                "SELECT u.lexeme, array_length(u.positions, 1) FROM unnest(to_tsvector('english', %s)) u",
                (query,)).fetchall() for _ in range(n)]
            want = ref.get_scores(qlex)
            got = dict(keyword_scores(conn, info, query, 1000))
            matched = [i for i, cid in enumerate(ids) if set(corpus[i]) & set(qlex)]
            assert sorted(got) == sorted(ids[i] for i in matched)
            np.testing.assert_allclose([got[ids[i]] for i in matched], want[matched], rtol=1e-9)
            # the pruned top n (candidates from the rarest terms first) is the top n of the full ranking
            full = keyword_scores(conn, info, query, 1000)
            for n in (1, 3, 8):
                assert keyword_scores(conn, info, query, n) == full[:n]


def test_or_semantics_and_no_terms(store, tmp_path, fresh_collection):
    _write_tree(tmp_path, {"a.txt": "the quick brown fox", "b.txt": "a lazy dog sleeps", "c.txt": "unrelated words"})
    emb = HashEmbedder()
    index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=fresh_collection)
    hits = search("fox and dogs", k=5, collection=fresh_collection, store=store, keyword=True)
    assert sorted(h.path.rsplit("/", 1)[1] for h in hits) == ["a.txt", "b.txt"]  # either word; 'dogs' stems
    assert search("the and of", k=5, collection=fresh_collection, store=store, keyword=True) == []
    assert search("nonexistentword", k=5, collection=fresh_collection, store=store, keyword=True) == []
    # quotes, backslashes and tsquery operators in the query are words, not syntax
    for evil in ("fox's", "fox\\", "fox | !dog & (", "'fox'", "fox:*"):
        got = search(evil, k=5, collection=fresh_collection, store=store, keyword=True)
        assert got and got[0].path.endswith("a.txt")


def test_keyword_sql_uses_gin_index(store, fresh_collection):
    """With enough chunks that a rare term's rows are few, candidates come from the GIN index on tsv."""
    rng = np.random.default_rng(5)
    emb = HashEmbedder()
    words = [f"w{i}x" for i in range(4000)]
    with store.connect() as conn:
        info = ensure_collection(conn, fresh_collection, emb.identity(), 64, 0)
        for d in range(20):
            texts = [" ".join(rng.choice(words, 30)) for _ in range(100)]
            chunks = [ChunkRecord(i, t, 32, 0, len(t)) for i, t in enumerate(texts)]
            write_document(conn, info.id, DocumentRecord(f"doc{d}", f"h{d}", 0.0, 1), chunks, emb.embed(texts))
        conn.execute("SELECT gin_clean_pending_list('chunks_tsv_gin')")
        conn.execute("ANALYZE chunks, keyword_terms")
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")  # a small table: show that the index is usable
            params = query_terms(conn, info, "w17x w423x") | {"n": 10}
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + keyword_ids_sql(info, "", "n"), params))
    assert "chunks_tsv_gin" in plan, plan


def test_migration_backfills_statistics_of_existing_chunks(store):
    """A database holding chunks from before the keyword statistics gets them exact on upgrade; rows without
    keyword_len are then counted through their tsvector."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    from embedkit.store import migrate

    name = "mig_" + uuid.uuid4().hex[:8]
    with store.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_url(store.url).set(database=name)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn, "0001")
            conn.execute(text(
                "INSERT INTO collections (id, name, model_name, model_file, model_sha256, architecture, dim, pooling, "
                "normalize, chunk_tokens, chunk_overlap) VALUES (1, 'c', 'm', 'm', 's', 'a', 2, 'mean', true, 8, 0)"))
            conn.execute(text("INSERT INTO documents (collection_id, id, path, content_sha256, mtime, size, n_chunks) "
                              "VALUES (1, 1, 'p', 'h', 0, 1, 3)"))
            for i, t in enumerate(["rivers flow to the sea", "the river stone", "stones and more stones"]):
                conn.execute(text("INSERT INTO chunks (collection_id, document_id, ordinal, text, token_count, "
                                  "char_start, char_end, embedding) VALUES (1, 1, :i, :t, 3, 0, 1, '[1,0]')"),
                             {"i": i, "t": t})
            conn.commit()
            migrate.upgrade(conn)
            totals = conn.execute(text("SELECT chunks, tokens FROM keyword_stats WHERE collection_id = 1")).one()
            terms = dict(conn.execute(text("SELECT term, chunks FROM keyword_terms WHERE collection_id = 1")).all())
            assert tuple(totals) == (3, 7)  # river flow sea | river stone | stone stone ("more" is a stopword)
            assert terms == {"river": 2, "flow": 1, "sea": 1, "stone": 2}
            # deleting a chunk written before the migration (keyword_len NULL) keeps the statistics exact
            conn.execute(text("DELETE FROM chunks WHERE ordinal = 2"))
            conn.commit()
            terms = dict(conn.execute(text("SELECT term, chunks FROM keyword_terms WHERE collection_id = 1")).all())
            assert terms == {"river": 2, "flow": 1, "sea": 1, "stone": 1}
            impacts = sorted(conn.execute(text("SELECT term, tf, lenb, chunks FROM keyword_impacts")).all())
            # lengths 3 and 2: buckets 2 (3 <= |d| < 4) and 1 (2 <= |d| < 3)
            assert impacts == [("flow", 1, 2, 1), ("river", 1, 1, 1), ("river", 1, 2, 1), ("sea", 1, 2, 1),
                               ("stone", 1, 1, 1)]
            assert tuple(conn.execute(text("SELECT chunks, tokens FROM keyword_stats")).one()) == (2, 5)
    finally:
        engine.dispose()
        with store.connect() as conn:
            conn.execute(f"DROP DATABASE {name}")


def _zipf_collection(conn, name: str, emb, docs: int = 12, per_doc: int = 50):
    """Chunks of 5 to 80 words drawn from a Zipf-like vocabulary (common words in most chunks, repeated)."""
    rng = np.random.default_rng(23)
    words = [f"w{i}x" for i in range(300)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    info = ensure_collection(conn, name, emb.identity(), 64, 0)
    for d in range(docs):
        texts = [" ".join(rng.choice(words, int(rng.integers(5, 80)), p=p)) for _ in range(per_doc)]
        chunks = [ChunkRecord(i, t, 32, 0, len(t)) for i, t in enumerate(texts)]
        write_document(conn, info.id, DocumentRecord(f"doc{d}", f"h{d}", 0.0, 1), chunks, emb.embed(texts))
    return info, words


def test_impact_tiers_give_the_exact_top_n(store, fresh_collection):
    """Reading impact tiers gives the top n of scoring every matching chunk (same ids, order and scores) when
    the budget allows the proof, and with a small budget exact scores of a subset, flagged approximate; the
    tiers of chunks holding most query terms prove the same top n from fewer chunks than the keys alone."""
    from embedkit.search.impacts import impact_top

    emb = HashEmbedder()
    with store.connect() as conn:
        info, words = _zipf_collection(conn, fresh_collection, emb)
        conn.execute("ANALYZE chunks")
        # the tf read back from ts_rank equals the tsvector's positions, up to the 256 kept
        texts = {tf: " ".join(["lanternx"] * tf + ["stone"] * 3) for tf in (1, 2, 7, 8, 9, 100, 255, 256, 300)}
        for tf, t in texts.items():
            write_document(conn, info.id, DocumentRecord(f"tf{tf}", f"t{tf}", 0.0, 1),
                           [ChunkRecord(0, t, 8, 0, len(t))], emb.embed([t]))
        rng = np.random.default_rng(3)
        queries = [" ".join(rng.choice(words[:40], int(rng.integers(1, 5)))) for _ in range(12)]
        queries += ["w0x w1x w2x", "w0x", "w250x w0x", "lanternx", "lanternx stone w3x"]
        approximate, read_tiers, read_keys = 0, 0, 0
        for query in queries:
            full = keyword_scores(conn, info, query, 10_000, path_glob="*")  # a filter: every matching chunk
            params = query_terms(conn, info, query)
            for n in (1, 5, 37, 200):
                got = impact_top(conn, info, params["terms"], params["weights"], params["avgdl"], n, BM25_K1, BM25_B,
                                 first=50, budget=10**9)
                assert got.exact
                assert [r[0] for r in got.rows] == [r[0] for r in full[:n]], (query, n)
                np.testing.assert_allclose([r[1] for r in got.rows], [r[1] for r in full[:n]], rtol=1e-12)
                small = impact_top(conn, info, params["terms"], params["weights"], params["avgdl"], n, BM25_K1,
                                   BM25_B, first=20, budget=40)
                exact_scores = dict(full)
                assert all(abs(exact_scores[i] - s) <= 1e-12 * abs(s) for i, s in small.rows)
                if small.exact:
                    assert [r[0] for r in small.rows] == [r[0] for r in full[:n]]
                else:
                    approximate += 1
                # without the tiers (impact keys only): the same top n, never from fewer chunks
                keys_only = impact_top(conn, info, params["terms"], params["weights"], params["avgdl"], n, BM25_K1,
                                       BM25_B, first=50, budget=10**9, tier_terms=0)
                assert keys_only.exact and keys_only.rows == got.rows
                read_tiers, read_keys = read_tiers + got.chunks_read, read_keys + keys_only.chunks_read
                part = impact_top(conn, info, params["terms"], params["weights"], params["avgdl"], n, BM25_K1,
                                  BM25_B, first=20, budget=10**9, proven=max(1, n // 4))
                assert part.exact and min(max(1, n // 4), len(full)) <= len(part.rows) <= n
                assert [r[0] for r in part.rows[:max(1, n // 4)]] == [r[0] for r in full[:max(1, n // 4)]]
            # the default path (unfiltered) agrees with the proof whenever it has one
            default = keyword_scores(conn, info, query, 10, budget=None)
            assert [r[0] for r in default] == [r[0] for r in full[:10]]
            np.testing.assert_allclose([r[1] for r in default], [r[1] for r in full[:10]], rtol=1e-12)
        assert approximate > 0  # the small budget was binding somewhere
        assert read_tiers < read_keys  # the tiers proved the top n from fewer chunks
        # the candidates come from the impact GIN index, in one process, even in a small table
        from embedkit.search.impacts import _score_sql, tf_cuts, tier_tsqueries

        params = query_terms(conn, info, "w0x w1x")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN " + _score_sql(info, 2, BM25_K1, BM25_B),
            {"cuts": tf_cuts(conn), "avgdl": params["avgdl"], "n": 10, "keys": ["w0x 3 9"], "w0": 1.0, "w1": 1.0,
             "q0": "w0x", "q1": "w1x"}, prepare=False))
        assert "chunks_impact_gin" in plan and "Gather" not in plan, plan
        # a pass with a tier reads both GIN indexes (BitmapOr), still in one process
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN " + _score_sql(info, 2, BM25_K1, BM25_B, keys=True, tier=1),
            {"cuts": tf_cuts(conn), "avgdl": params["avgdl"], "n": 10, "keys": ["w0x 3 9"], "w0": 1.0, "w1": 1.0,
             "q0": "w0x", "q1": "w1x", "tier0": tier_tsqueries(["w0x", "w1x"], 2)[0]}, prepare=False))
        assert "chunks_impact_gin" in plan and "chunks_tsv_gin" in plan and "Gather" not in plan, plan
        lantern = keyword_scores(conn, info, "lanternx", 20, budget=None)
        tfs = dict(conn.execute(
            "SELECT c.id, array_length(u.positions, 1) FROM chunks c, unnest(c.tsv) u "
            "WHERE c.collection_id = %s AND u.lexeme = 'lanternx'", (info.id,)).fetchall())
        top = max(tfs.values())  # the positions a tsvector keeps
        assert top >= 255 and sorted(tfs.values())[:6] == [1, 2, 7, 8, 9, 100]
        assert [tfs[i] for i, _ in lantern][:2] == [top, top]
