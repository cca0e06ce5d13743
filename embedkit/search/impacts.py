"""BM25 top n from impact tiers: candidates read from the GIN index over (lexeme, tf, length bucket) keys of
migration 0005, best-scoring keys first, instead of every chunk holding a query word.

Each key of a query term t bounds what t adds to a chunk holding that key: with tf at most the key's (any tf
for the capped key) and |d| at least its length bucket's lower end, t's BM25 term is at most

    ub = w_t * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d|_min / avgdl))

Keys are taken in decreasing ub. After the chunks of the keys taken so far are scored exactly, a chunk holding
none of them scores at most `rest` = the sum over terms of the largest ub among each term's keys not taken. So
when the n-th best exact score found is above `rest`, the top n is exact.

Common words make that bound loose: their keys hold thousands of chunks, and a chunk holding none of the keys
read may still hold every query term. So the passes also read tiers: a tier (h, m) is the chunks holding at
least m of the query's h heaviest terms (h at most TIER_TERMS; its m-term ANDs as tsqueries over the `tsv` GIN
index, BitmapOr'ed with the keys' scan). A chunk scored by neither holds at most m - 1 of those h terms, none
through a key read, so it scores at most the sum of the m - 1 largest `rem(t)` over them plus `rem(t)` of the
other terms, with `rem(t)` the largest ub among t's keys not read (and at most the smallest such bound over the
tiers read). The best chunks of a multi-word query usually hold most of its words, and few chunks do (the GIN
index intersects the posting lists without reading rows), so the proof comes after reading a few hundred
chunks where the keys alone needed thousands; leaving a very common, light term out of h keeps the tier small.

The first pass takes keys until about `first` chunks (counted from `keyword_impacts`, an upper bound of the
distinct chunks) and, of the tiers expected (terms independent, from their document frequencies) to hold at most
`first` chunks, the one with the lowest bound. Each further pass (MAX_PASSES in all) is the cheapest (estimated
chunks) set of more keys and at most one more tier whose bound is below the n-th score found, unless every such
pass would pass `budget` chunks in all: then it takes keys up to the budget and the top n is approximate (the
highest-impact chunks scored exactly; measured in benchmarks/RESULTS.md).

A candidate's exact term frequencies come from `ts_rank` of each single-lexeme query with unit weights and no
normalisation, which is sum_{i<=tf} 1/i^2 / (pi^2/6) (PostgreSQL's `calc_rank_or`), strictly increasing in tf:
`width_bucket` over the midpoints of its values for tf = 1..256 (a tsvector keeps at most 256 positions per
lexeme) turns it back into tf. That costs about as little as reading the row; unnesting the tsvector costs more.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import psycopg

from embedkit.store.collections import CollectionInfo

TF_CAP = 8  # keys hold least(tf, TF_CAP); must match migration 0005
LENGTH_BUCKETS = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896,
                  4096)  # must match migration 0005
MAX_POSITIONS = 256  # positions a tsvector keeps per lexeme
FIRST_CHUNKS = 500  # chunks (by key counts) the first pass reads
BUDGET_CHUNKS = 3000  # chunks (by key counts) both passes read at most; past it the top n is approximate
MAX_PASSES = 3  # round trips of impact passes at most
TIER_TERMS = 6  # the heaviest query terms the tiers count: a tier is at most C(6, 3) = 20 ANDs


@dataclass
class ImpactResult:
    """The top n (chunk id, score), best first, and whether it is proven exact."""

    rows: list[tuple]  # (chunk id, score, *`columns`, *the columns `wrap` adds)
    exact: bool
    chunks_read: int


_TF_CUTS: dict[str, list[float]] = {}
_CUTS_TEXT: dict[str, str] = {}


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


def _cuts_text(conn: psycopg.Connection) -> str:
    """`tf_cuts` as float8[] input text (exact: repr round-trips a float8). Sent as one string: adapting the
    256-float list took ~0.8 ms a pass."""
    key = str(conn.info.port) + conn.info.host
    if key not in _CUTS_TEXT:
        _CUTS_TEXT[key] = "{" + ",".join(repr(c) for c in tf_cuts(conn)) + "}"
    return _CUTS_TEXT[key]


def _length_floor(bucket: int) -> int:
    return 1 if bucket == 0 else LENGTH_BUCKETS[bucket - 1]


def _score_sql(info: CollectionInfo, n_terms: int, k1: float, b: float, keys: bool = True, tier: int = 0,
               columns: str = "") -> str:
    """SQL of (id, exact BM25 score, *`columns`) of the chunks holding any key of %(keys)s (with `keys`) or
    matching any of the `tier` tsqueries %(tier0)s, %(tier1)s, ..., best n first; `columns`: more columns of the
    chunk (alias c) taken in the same scan, e.g. ", c.text"."""
    length = "coalesce(c.keyword_len, embedkit_tsv_length(c.tsv))"
    kd = f"({k1 * (1 - b)!r}::float8 + {k1 * b!r}::float8 * {length} / %(avgdl)s::float8)"
    # tf * (k1 + 1) / (tf + K) = (k1 + 1) * (1 - K / (tf + K)): tf appears once
    terms = " + ".join(
        f"%(w{i})s::float8 * (1 - {kd} / (width_bucket(ts_rank('{{1,1,1,1}}'::float4[], c.tsv, %(q{i})s::tsquery), "
        f"%(cuts)s::float8[]::float4[]) + {kd}))" for i in range(n_terms))
    # one condition per AND: GIN reads each with its fast scan (skipping through the other terms' postings),
    # measured 1.3-2.3x faster than one tsquery OR-ing the ANDs, whose every posting the index must check
    found = ["embedkit_impact_keys(c.tsv) && %(keys)s::text[]"] if keys else []
    found += [f"c.tsv @@ %(tier{i})s::tsquery" for i in range(tier)]
    return (f"SELECT c.id, {float(k1) + 1!r} * ({terms}) AS score{columns} FROM chunks c "
            f"WHERE c.collection_id = {int(info.id)} AND ({' OR '.join(found)}) "
            "ORDER BY score DESC, c.id LIMIT %(n)s")


def tier_tsqueries(lexemes: list[str], m: int) -> list[str]:
    """tsquery texts, one per m-term AND of `lexemes`: a chunk holds at least m of them when it matches any."""
    from embedkit.search.keyword import tsquery_lexeme

    return [" & ".join(tsquery_lexeme(t) for t in c) for c in combinations(lexemes, m)]


Tier = tuple[int, int]  # (h, m): the chunks holding at least m of the query's h heaviest terms


def _expected(probs: list[float], total: int) -> dict[Tier, float]:
    """Expected chunks of each tier (h, m), 2 <= m <= h, for terms held independently with `probs` (heaviest
    first; Poisson binomial): what a tier is guessed to cost before reading it."""
    out: dict[Tier, float] = {}
    dist = [1.0]  # dist[i]: probability of holding exactly i of the first h terms
    for h, p in enumerate(probs, start=1):
        dist = [(dist[i] if i < len(dist) else 0.0) * (1 - p) + (dist[i - 1] * p if i else 0.0)
                for i in range(len(dist) + 1)]
        out.update({(h, m): total * sum(dist[m:]) for m in range(2, h + 1)})
    return out


class _Bounds:
    """Bounds on the score of a chunk not yet scored, after reading the keys keys[:j] and the chunks of some
    tiers (h, m) over `heavy`, the tier terms by decreasing weight."""

    def __init__(self, keys: list[tuple[float, int, str, int]], n_terms: int, heavy: list[int]):
        self.heavy, self.size = heavy, len(keys)
        # each term's key positions and bounds (keys are sorted by bound, so each term's bounds decrease)
        self.pos: list[list[int]] = [[] for _ in range(n_terms)]
        self.ubs: list[list[float]] = [[] for _ in range(n_terms)]
        for i, (ub, t, _, _) in enumerate(keys):
            self.pos[t].append(i)
            self.ubs[t].append(ub)
        self.prefix = [0]  # chunks of keys[:j]
        for k in keys:
            self.prefix.append(self.prefix[-1] + k[3])
        self._rem: dict[int, list[float]] = {}

    def rem(self, j: int) -> list[float]:
        """Per term, the largest bound among its keys in keys[j:] (0 once all its keys are read)."""
        if j not in self._rem:
            out = []
            for pos, ubs in zip(self.pos, self.ubs, strict=True):
                k = bisect_left(pos, j)
                out.append(ubs[k] if k < len(pos) else 0.0)
            self._rem[j] = out
        return self._rem[j]

    def tier(self, j: int, tier: Tier) -> float:
        """Bound on a chunk holding none of keys[:j] and fewer than m of the h heaviest terms."""
        h, m = tier
        rem = self.rem(j)
        inside = set(self.heavy[:h])
        top = sorted((rem[t] for t in inside), reverse=True)
        return sum(top[:m - 1]) + sum(r for t, r in enumerate(rem) if t not in inside)

    def bound(self, j: int, tiers: set[Tier]) -> float:
        """Bound on a chunk holding none of keys[:j] and outside each of `tiers`."""
        return min([sum(self.rem(j)), *(self.tier(j, t) for t in tiers)])

    def proving(self, j: int, tiers: set[Tier], nth: float) -> int | None:
        """The fewest keys j' >= j after which the bound is below `nth` (bounds fall as keys are read), or None."""
        if self.bound(self.size, tiers) >= nth:
            return None
        lo, hi = j, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self.bound(mid, tiers) < nth:
                hi = mid
            else:
                lo = mid + 1
        return lo


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
    total_chunks: int | None = None,
    tier_terms: int = TIER_TERMS,
    columns: str = "",
) -> ImpactResult:
    """The n best chunks by BM25 for the query terms (each with weight qtf * idf), from impact tiers (see the
    module's note); exact when `exact` says so, always when `budget` is at least the chunks of all keys.
    With `proven` < n, only the first `proven` are proven (`exact`); the rest are the best of the chunks read
    (fewer than n when those hold fewer). `impacts` are the terms' (term, tf, length bucket, chunks) rows of
    `keyword_impacts` and `total_chunks` the collection's chunk count when the caller has read them (else they
    are read here). `tier_terms`: how many of the heaviest terms the tiers count (0: no tiers). `columns` (e.g.
    ", c.text") are chunk columns each pass selects after id and score in the scan that scores the chunks, and
    `wrap` turns each pass's SQL (id, score, *columns; best first) into SQL returning those and more columns in
    the same order, so that callers get what they show of the chunks in the same round trip."""
    proof = n if proven is None else max(1, min(n, proven))
    from embedkit.search.keyword import tsquery_lexeme

    weight = dict(zip(terms, weights, strict=True))
    order = {t: i for i, t in enumerate(terms)}
    if impacts is None:
        impacts = conn.execute(
            "SELECT term, tf, lenb, chunks FROM keyword_impacts WHERE collection_id = %s AND term = ANY(%s)",
            (int(info.id), terms),
        ).fetchall()
    if total_chunks is None:
        row = conn.execute("SELECT chunks FROM keyword_stats WHERE collection_id = %s", (int(info.id),)).fetchone()
        total_chunks = int(row[0]) if row else 0
    keys = []  # (ub, term index, key, chunks)
    df = [0] * len(terms)
    for term, tf, lenb, chunks in impacts:
        kd = k1 * (1 - b + b * _length_floor(lenb) / avgdl)
        factor = (k1 + 1) if tf >= TF_CAP else tf * (k1 + 1) / (tf + kd)
        keys.append((weight[term] * factor, order[term], f"{term} {tf} {lenb}", chunks))
        df[order[term]] += chunks
    keys.sort(key=lambda k: (-k[0], k[2]))
    # the tiers count the heaviest terms (by their best key) held by at least one chunk
    best: dict[int, float] = {}
    for ub, t, _, _ in keys:
        best.setdefault(t, ub)
    heavy = sorted(best, key=lambda t: (-best[t], t))[:tier_terms]
    bounds = _Bounds(keys, len(terms), heavy)
    expected = _expected([min(1.0, df[t] / max(total_chunks, 1)) for t in heavy], total_chunks)

    params = {"cuts": _cuts_text(conn), "avgdl": avgdl, "n": n,
              **{f"w{i}": w for i, w in enumerate(weights)},
              **{f"q{i}": tsquery_lexeme(t) for i, t in enumerate(terms)}}
    found: dict[int, tuple] = {}

    def read(lo: int, hi: int, tier: Tier | None) -> list[tuple]:
        if hi > lo or tier is not None:
            ands = tier_tsqueries([terms[t] for t in heavy[:tier[0]]], tier[1]) if tier is not None else []
            sql = _score_sql(info, len(terms), k1, b, keys=hi > lo, tier=len(ands), columns=columns)
            if wrap is not None:
                sql = wrap(sql)
            # Never prepared: a generic plan (no keys known) read the same chunks 5-10x slower than a plan for
            # these keys. The key function's cost keeps every plan on the GIN index.
            more = {"keys": [k[2] for k in keys[lo:hi]], **{f"tier{i}": q for i, q in enumerate(ands)}}
            rows = conn.execute(sql, params | more, prepare=False).fetchall()
            found.update((int(r[0]), (int(r[0]), float(r[1]), *r[2:])) for r in rows)
        return sorted(found.values(), key=lambda x: (-x[1], x[0]))[:n]

    def nth_of(top: list[tuple]) -> float:
        return top[proof - 1][1] if len(top) >= proof else 0.0

    # first pass: keys until `first` chunks (with a tier only keys that fit in them: a key is read whole) and,
    # of the tiers expected to hold at most `first` chunks, the one with the lowest bound after those keys
    j, total = 0, 0
    while j < len(keys) and total + keys[j][3] <= first:
        total += keys[j][3]
        j += 1
    fits = [t for t, e in expected.items() if e <= first]
    tier = min(fits, key=lambda t: (bounds.tier(j, t), expected[t]), default=None)
    if tier is None:
        while j < len(keys) and (total < first or j == 0):
            total += keys[j][3]
            j += 1
    read_tiers = {tier} if tier is not None else set()
    total += round(expected[tier]) if tier is not None else 0
    top = read(0, j, tier)
    nth = nth_of(top)
    if (nth > bounds.bound(j, read_tiers) and len(top) == n) or j == len(keys):
        return ImpactResult(top, True, total)
    for _ in range(MAX_PASSES - 1):
        step = _next_pass(bounds, keys, expected, j, read_tiers, nth, budget - total, first)
        if step is None:
            break
        hi, tier, cost = step
        top = read(j, hi, tier)
        j, total = hi, total + cost
        read_tiers |= {tier} if tier is not None else set()
        nth = nth_of(top)
        if nth > bounds.bound(j, read_tiers) or j == len(keys):
            return ImpactResult(top, True, total)
    # no proof within the budget: the highest-impact keys up to it
    hi = j
    while hi < len(keys) and (bounds.bound(hi, read_tiers) >= nth or total < n) and total + keys[hi][3] <= budget:
        total += keys[hi][3]
        hi += 1
    top = read(j, hi, None)
    nth = nth_of(top)
    return ImpactResult(top, nth > bounds.bound(hi, read_tiers) or hi == len(keys), total)


def _next_pass(bounds: _Bounds, keys: list[tuple[float, int, str, int]], expected: dict[Tier, float], j: int,
               read_tiers: set[Tier], nth: float, left: int, first: int) -> tuple[int, Tier | None, int] | None:
    """(keys up to, tier to read or None, estimated chunks) of the next pass after reading keys[:j] and
    `read_tiers`, within `left` chunks: the cheapest that proves the top n when the n-th score found so far
    (`nth`) is known, else a wider look (the unread tier with the lowest bound and `first` more chunks of
    keys); None when nothing fits."""
    unread = [t for t in expected if t not in read_tiers and expected[t] <= left]
    if nth <= 0:  # fewer than the chunks to prove found: widen
        tier = min(unread, key=lambda t: (bounds.tier(j, t), expected[t]), default=None)
        hi, cost = j, round(expected[tier]) if tier is not None else 0
        spent = cost
        while hi < len(keys) and cost - spent < first and cost + keys[hi][3] <= left:
            cost += keys[hi][3]
            hi += 1
        return (hi, tier, cost) if hi > j or tier is not None else None
    plan = None
    for tier in [None, *unread]:
        tiers = read_tiers | ({tier} if tier is not None else set())
        hi = bounds.proving(j, tiers, nth)
        if hi is None or (hi == j and tier is None):
            continue
        cost = bounds.prefix[hi] - bounds.prefix[j] + (round(expected[tier]) if tier is not None else 0)
        if cost <= left and (plan is None or cost < plan[2]):
            plan = (hi, tier, cost)
    return plan
