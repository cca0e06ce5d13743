"""Keyword ranking: Okapi BM25 over chunks, scored in plain PostgreSQL SQL.

Terms are the lexemes of `to_tsvector('english', query)` (stemmed, stopwords dropped), with OR semantics: a
chunk holding any of them is a candidate (found through the GIN index on `chunks.tsv`). Per term t and chunk d:

    idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)),  idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))

with tf the occurrences of t in d, |d| the chunk's lexeme occurrences (`chunks.keyword_len`), and N, avgdl and
df(t) from `keyword_stats` / `keyword_terms`, which triggers keep exact in the transaction that writes the
chunks (migration 0002). The idf is Lucene's (never negative); a term repeated in the query counts that often.

The term frequencies of a candidate come from its tsvector without unnesting all of it: `setweight` marks the
query's lexemes, `ts_filter` keeps only those, and only they are unnested.

Common terms would make every chunk a candidate, so candidates are first taken from the rarest terms only
(MaxScore pruning, exact): a term's contribution is below qtf * idf * (k1 + 1), so when the n-th best score
among chunks holding a rare term exceeds the sum of those bounds over the common terms left out, no chunk
holding only common terms can enter the top n. Otherwise the next rarer-first term joins the candidate terms
and the query runs again (at worst with all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from embedkit.search.impacts import BUDGET_CHUNKS, FIRST_CHUNKS, impact_top
from embedkit.search.sql import document_filter
from embedkit.store.collections import CollectionInfo

BM25_K1 = 0.9  # Anserini's BEIR defaults
BM25_B = 0.4
TEXT_CONFIG = "english"  # must be the configuration of the generated chunks.tsv column


def query_terms(conn: psycopg.Connection, info: CollectionInfo, query: str) -> dict[str, Any] | None:
    """The query's indexed terms as parameters of `keyword_ids_sql`: `tsq` (their OR as tsquery text),
    `terms`, `weights` (query frequency x idf of each), `df` (chunks holding each) and `avgdl`, rarest term
    first, with `impacts`: the (term, tf, length bucket, chunks) keys of the terms from `keyword_impacts`
    and `total_chunks` (the collection's), read in the same round trip for `impact_top`. None when no term
    of the query is indexed."""
    cid = int(info.id)
    rows = conn.execute(
        f"WITH st AS (SELECT chunks::float8 AS n FROM keyword_stats WHERE collection_id = {cid}) "
        "SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) * ln(1 + (st.n - t.chunks + 0.5) / "
        "(t.chunks + 0.5)), (SELECT tokens::float8 / greatest(chunks, 1) FROM keyword_stats "
        f"WHERE collection_id = {cid}), t.chunks, (SELECT array_agg(ARRAY[i.tf, i.lenb, i.chunks]) "
        f"FROM keyword_impacts i WHERE i.collection_id = {cid} AND i.term = u.lexeme), st.n "
        f"FROM unnest(to_tsvector('{TEXT_CONFIG}'::regconfig, %s)) u "
        f"JOIN keyword_terms t ON t.collection_id = {cid} AND t.term = u.lexeme CROSS JOIN st ORDER BY 4, 1",
        (query,),
    ).fetchall()
    if not rows:
        return None
    return {
        "tsq": " | ".join(tsquery_lexeme(r[0]) for r in rows),
        "terms": [r[0] for r in rows],
        "weights": [float(r[1]) for r in rows],
        "avgdl": float(rows[0][2]),
        "df": [int(r[3]) for r in rows],
        "impacts": [(r[0], int(tf), int(lenb), int(n)) for r in rows for tf, lenb, n in (r[4] or [])],
        "total_chunks": int(rows[0][5]),
    }


def tsquery_lexeme(term: str) -> str:
    """A lexeme quoted for tsquery input, taken verbatim (no parsing, stemming or operators)."""
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def keyword_ids_sql(info: CollectionInfo, filt: str, limit_param: str, k1: float = BM25_K1, b: float = BM25_B) -> str:
    """SQL selecting (id, score) of the best chunks by BM25, best first, for the parameters of `query_terms`.

    The tsquery is a bound parameter, so the planner sees its lexemes and can estimate the GIN index scan.
    `filt` is a `document_filter` condition on alias `c`; `limit_param` names the LIMIT parameter."""
    cid = int(info.id)
    k1, b = float(k1), float(b)
    return (
        "WITH cand AS (SELECT c.id, c.tsv, coalesce(c.keyword_len, embedkit_tsv_length(c.tsv))::float8 AS len "
        f"FROM chunks c WHERE c.collection_id = {cid} AND c.tsv @@ %(tsq)s::tsquery{filt}) "
        f"SELECT cand.id, sum(q.weight * m.tf * {k1 + 1} / "
        f"(m.tf + {k1} * (1 - {b} + {b} * cand.len / %(avgdl)s::float8))) AS score "
        "FROM cand CROSS JOIN LATERAL ("
        "SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf "
        "FROM unnest(ts_filter(setweight(cand.tsv, 'A', %(terms)s::text[]), '{a}')) u) m "
        "JOIN unnest(%(terms)s::text[], %(weights)s::float8[]) AS q(term, weight) ON q.term = m.lexeme "
        f"GROUP BY cand.id ORDER BY score DESC, cand.id LIMIT %({limit_param})s"
    )


def keyword_scores(
    conn: psycopg.Connection,
    info: CollectionInfo,
    query: str,
    n: int,
    path_glob: str | None = None,
    metadata: dict[str, Any] | None = None,
    k1: float = BM25_K1,
    b: float = BM25_B,
    budget: int | None = BUDGET_CHUNKS,
    proven: int | None = None,
    first: int = FIRST_CHUNKS,
    wrap: Callable[[str], str] | None = None,
    columns: str = "",
) -> list[tuple]:
    """(chunk id, BM25 score) of the n best chunks for `query`, best first (empty when no term is indexed).

    Unfiltered searches read impact tiers (`embedkit.search.impacts`): exact scores, and the exact top n
    unless proving it would read more than `budget` chunks (None: no limit), after a first pass of about
    `first` chunks; with `proven`, only the first `proven` rows are proven and the rest are the best of the
    chunks read. There `columns` and `wrap` (see `impact_top`) add columns to each row. Filtered searches score
    every matching chunk that holds a query term, with the pruning of this module's note (exact), and ignore
    `columns` and `wrap`."""
    params = query_terms(conn, info, query)
    if params is None:
        return []
    params["n"] = n
    filt = document_filter(info, path_glob, metadata, params)
    if not filt:
        limit = budget if budget is not None else sum(params["df"])  # the chunks of all keys
        return impact_top(conn, info, params["terms"], params["weights"], params["avgdl"], n, k1, b,
                          first=first, budget=limit, proven=proven, impacts=params["impacts"], wrap=wrap,
                          columns=columns, total_chunks=params["total_chunks"]).rows
    sql = keyword_ids_sql(info, filt, "n", k1, b)
    terms, bounds, df = params["terms"], [w * (k1 + 1) for w in params["weights"]], params["df"]
    used = 1
    while True:
        # the fewest rarest-first terms that can fill n rows, unless that is all of them
        while used < len(terms) and sum(df[:used]) < n:
            used += 1
        params["tsq"] = " | ".join(tsquery_lexeme(t) for t in terms[:used])
        rows = [(int(r[0]), float(r[1])) for r in conn.execute(sql, params).fetchall()]
        if used == len(terms) or (len(rows) == n and rows[-1][1] > sum(bounds[used:])):
            return rows
        used += 1
