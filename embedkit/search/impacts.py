"""BM25 top n from impact tiers: candidates read from the GIN index over (lexeme, tf, length bucket) keys of
migration 0005, best-scoring keys first, instead of every chunk holding a query word.

Each key of a query term t bounds what t adds to a chunk holding that key: with tf at most the key's (any tf
for the capped key) and |d| at least its length bucket's lower end, t's BM25 term is at most

    ub = w_t * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d|_min / avgdl))

Keys are taken in decreasing ub. After the chunks of the keys taken so far are scored exactly, a chunk holding
none of them scores at most `rest` = the sum over terms of the largest ub among each term's keys not taken. So
when the n-th best exact score found is above `rest`, the top n is exact. The first pass takes keys until about
`first` chunks (counted from `keyword_impacts`, an upper bound of the distinct chunks); the second takes the keys
needed for the proof, unless their chunks would pass `budget` in all: then it stops at the budget and the top n
is approximate (the highest-impact chunks scored exactly; measured in benchmarks/RESULTS.md).

A candidate's exact term frequencies come from `ts_rank` of each single-lexeme query with unit weights and no
normalisation, which is sum_{i<=tf} 1/i^2 / (pi^2/6) (PostgreSQL's `calc_rank_or`), strictly increasing in tf:
`width_bucket` over the midpoints of its values for tf = 1..256 (a tsvector keeps at most 256 positions per
lexeme) turns it back into tf. That costs about as little as reading the row; unnesting the tsvector costs more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from embedkit.store.collections import CollectionInfo

TF_CAP = 8  # keys hold least(tf, TF_CAP); must match migration 0005
LENGTH_BUCKETS = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896,
                  4096)  # must match migration 0005
MAX_POSITIONS = 256  # positions a tsvector keeps per lexeme
FIRST_CHUNKS = 500  # chunks (by key counts) the first pass reads
BUDGET_CHUNKS = 3000  # chunks (by key counts) both passes read at most; past it the top n is approximate


@dataclass
class ImpactResult:
    """The top n (chunk id, score), best first, and whether it is proven exact."""

    rows: list[tuple]  # (chunk id, score, *the columns `wrap` adds)
    exact: bool
    chunks_read: int


_TF_CUTS: dict[str, list[float]] = {}


def tf_cuts(conn: psycopg.Connection) -> list[float]:
    """Midpoints between ts_rank's values of one lexeme repeated tf = 0..256 times (unit weights), computed by
    the server itself once per server (float4 arithmetic as it does it)."""
    key = str(conn.info.port) + conn.info.host
    if key not in _TF_CUTS:
        vals = [r[0] for r in conn.execute(
            "SELECT ts_rank('{1,1,1,1}'::float4[], ('x:' || string_agg(i::text, ',')) ::tsvector, 'x'::tsquery) "
            "FROM generate_series(1, %s) n, generate_series(1, n) i GROUP BY n ORDER BY n", (MAX_POSITIONS,))]
        vals = [0.0, *vals]
        if any(a >= b for a, b in zip(vals, vals[1:], strict=False)):
            raise RuntimeError("ts_rank is not strictly increasing in tf on this server")
        _TF_CUTS[key] = [(a + b) / 2 for a, b in zip(vals, vals[1:], strict=False)]
    return _TF_CUTS[key]


def _length_floor(bucket: int) -> int:
    return 1 if bucket == 0 else LENGTH_BUCKETS[bucket - 1]


def _score_sql(info: CollectionInfo, n_terms: int, k1: float, b: float) -> str:
    """SQL of (id, exact BM25 score) of the chunks holding any key of %(keys)s, best n first."""
    length = "coalesce(c.keyword_len, embedkit_tsv_length(c.tsv))"
    kd = f"({k1 * (1 - b)!r}::float8 + {k1 * b!r}::float8 * {length} / %(avgdl)s::float8)"
    # tf * (k1 + 1) / (tf + K) = (k1 + 1) * (1 - K / (tf + K)): tf appears once
    terms = " + ".join(
        f"%(w{i})s::float8 * (1 - {kd} / (width_bucket(ts_rank('{{1,1,1,1}}'::float4[], c.tsv, %(q{i})s::tsquery), "
        f"%(cuts)s::float4[]) + {kd}))" for i in range(n_terms))
    return (f"SELECT c.id, {float(k1) + 1!r} * ({terms}) AS score FROM chunks c "
            f"WHERE c.collection_id = {int(info.id)} AND embedkit_impact_keys(c.tsv) && %(keys)s::text[] "
            "ORDER BY score DESC, c.id LIMIT %(n)s")


def impact_top(
    conn: psycopg.Connection,
    info: CollectionInfo,
    terms: list[str],
    weights: list[float],
    avgdl: float,
    n: int,
    k1: float,
    b: float,
    first: int = FIRST_CHUNKS,
    budget: int = BUDGET_CHUNKS,
    proven: int | None = None,
    impacts: list[tuple[str, int, int, int]] | None = None,
    wrap: Callable[[str], str] | None = None,
) -> ImpactResult:
    """The n best chunks by BM25 for the query terms (each with weight qtf * idf), from impact tiers (see the
    module's note); exact when `exact` says so, always when `budget` is at least the chunks of all keys.
    With `proven` < n, only the first `proven` are proven (`exact`); the rest are the best of the chunks read
    (fewer than n when those hold fewer). `impacts` are the terms' (term, tf, length bucket, chunks) rows of
    `keyword_impacts` when the caller has read them (else they are read here). `wrap` turns each pass's SQL
    (id, score; best first) into SQL returning (id, score, *more columns) in the same order, so that callers
    get what they show of the chunks in the same round trip."""
    proof = n if proven is None else max(1, min(n, proven))
    from embedkit.search.keyword import tsquery_lexeme

    weight = dict(zip(terms, weights, strict=True))
    order = {t: i for i, t in enumerate(terms)}
    if impacts is None:
        impacts = conn.execute(
            "SELECT term, tf, lenb, chunks FROM keyword_impacts WHERE collection_id = %s AND term = ANY(%s)",
            (int(info.id), terms),
        ).fetchall()
    keys = []  # (ub, term index, key, chunks)
    for term, tf, lenb, chunks in impacts:
        kd = k1 * (1 - b + b * _length_floor(lenb) / avgdl)
        factor = (k1 + 1) if tf >= TF_CAP else tf * (k1 + 1) / (tf + kd)
        keys.append((weight[term] * factor, order[term], f"{term} {tf} {lenb}", chunks))
    keys.sort(key=lambda k: (-k[0], k[2]))

    def rest(j: int) -> float:
        """Bound on the score of a chunk holding none of keys[:j]."""
        top: dict[int, float] = {}
        for ub, t, _, _ in keys[j:]:
            top.setdefault(t, ub)  # keys are in decreasing ub
        return sum(top.values())

    sql = _score_sql(info, len(terms), k1, b)
    if wrap is not None:
        sql = wrap(sql)
    params = {"cuts": tf_cuts(conn), "avgdl": avgdl, "n": n,
              **{f"w{i}": w for i, w in enumerate(weights)},
              **{f"q{i}": tsquery_lexeme(t) for i, t in enumerate(terms)}}
    found: dict[int, tuple] = {}

    def read(lo: int, hi: int) -> list[tuple]:
        if hi > lo:
            # Never prepared: a generic plan (no keys known) read the same chunks 5-10x slower than a plan for
            # these keys. The key function's cost keeps every plan on the GIN index.
            rows = conn.execute(sql, params | {"keys": [k[2] for k in keys[lo:hi]]}, prepare=False).fetchall()
            found.update((int(r[0]), (int(r[0]), float(r[1]), *r[2:])) for r in rows)
        return sorted(found.values(), key=lambda x: (-x[1], x[0]))[:n]

    j, total = 0, 0
    while j < len(keys) and (total < first or j == 0):
        total += keys[j][3]
        j += 1
    top = read(0, j)
    nth = top[proof - 1][1] if len(top) >= proof else 0.0
    if (nth > rest(j) and len(top) == n) or j == len(keys):
        return ImpactResult(top, True, total)
    hi = j
    while hi < len(keys) and (rest(hi) >= nth or total < n) and total + keys[hi][3] <= budget:
        total += keys[hi][3]
        hi += 1
    top = read(j, hi)
    nth = top[proof - 1][1] if len(top) >= proof else 0.0
    return ImpactResult(top, nth > rest(hi) or hi == len(keys), total)
