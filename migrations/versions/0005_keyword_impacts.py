"""Keyword impact tiers: a GIN index over each chunk's (lexeme, tf, length bucket) keys and the number of chunks
per key, so BM25 search reads first the chunks whose terms can score most instead of every chunk holding a
query word.

A chunk's keys are `lexeme || ' ' || least(tf, 8) || ' ' || length bucket`, with tf the lexeme's occurrences in
the chunk and the length bucket `width_bucket(|d|, LENGTH_BUCKETS)` of its lexeme occurrences |d| (the BM25
length). The index is an expression index (nothing is stored in the table; GIN posting lists are compressed,
and deleted chunks leave it at VACUUM, not in the deleting transaction). `keyword_impacts` counts the chunks of
each key per collection; the keyword-statistics triggers keep it exact in the transaction that writes the
chunks, like `keyword_terms`.

Revision ID: 0005_keyword_impacts
Revises: 0004_file_keys
Create Date: 2026-12-07
"""

from alembic import op

revision = "0005_keyword_impacts"
down_revision = "0004_file_keys"
branch_labels = None
depends_on = None

# Must match embedkit.search.impacts (TF_CAP, LENGTH_BUCKETS).
LENGTH_BUCKETS = "ARRAY[2,3,4,6,8,11,16,23,32,45,64,91,128,181,256,362,512,724,1024,1448,2048,2896,4096]"

# Only pg_catalog functions: index builds run with search_path = pg_catalog (PostgreSQL 17+). The length is
# embedkit_tsv_length's. COST: any plan that evaluated this per row instead of reading the GIN index would be
# far slower; the high cost keeps the planner on the index. PARALLEL UNSAFE: searches through the index then
# run in one process; starting parallel workers for a few thousand rows cost more than they saved on 2 cores.
IMPACT_KEYS = rf"""
CREATE OR REPLACE FUNCTION embedkit_impact_keys(v tsvector) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE COST 100000 AS $fn$
    SELECT array_agg(u.lexeme || ' ' || least(coalesce(array_length(u.positions, 1), 1), 8) || ' ' || l.b)
    FROM unnest(v) u, (SELECT width_bucket(coalesce(sum(coalesce(array_length(w.positions, 1), 1)), 0)::integer,
                                           {LENGTH_BUCKETS}) AS b FROM unnest(v) w) l
$fn$;
"""

ADD_STATS = rf"""
CREATE OR REPLACE FUNCTION embedkit_keyword_add() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO keyword_stats AS s (collection_id, chunks, tokens)
        SELECT n.collection_id, count(*), sum(coalesce(n.keyword_len, embedkit_tsv_length(n.tsv)))
        FROM new_rows n GROUP BY n.collection_id
    ON CONFLICT (collection_id) DO UPDATE SET chunks = s.chunks + excluded.chunks, tokens = s.tokens + excluded.tokens;
    INSERT INTO keyword_terms AS t (collection_id, term, chunks)
        SELECT n.collection_id, u.lexeme, count(*) FROM new_rows n, unnest(n.tsv) u GROUP BY 1, 2
    ON CONFLICT (collection_id, term) DO UPDATE SET chunks = t.chunks + excluded.chunks;
    INSERT INTO keyword_impacts AS t (collection_id, term, tf, lenb, chunks)
        SELECT n.collection_id, u.lexeme, least(coalesce(array_length(u.positions, 1), 1), 8),
               width_bucket(coalesce(n.keyword_len, embedkit_tsv_length(n.tsv)), {LENGTH_BUCKETS}), count(*)
        FROM new_rows n, unnest(n.tsv) u GROUP BY 1, 2, 3, 4
    ON CONFLICT (collection_id, term, tf, lenb) DO UPDATE SET chunks = t.chunks + excluded.chunks;
    RETURN NULL;
END
$fn$;
"""

REMOVE_STATS = rf"""
CREATE OR REPLACE FUNCTION embedkit_keyword_remove() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    dead_cids bigint[];
    dead_terms text[];
    dead_tfs smallint[];
    dead_lenbs smallint[];
BEGIN
    UPDATE keyword_stats s SET chunks = s.chunks - d.n, tokens = s.tokens - d.len
    FROM (SELECT o.collection_id, count(*) AS n, sum(coalesce(o.keyword_len, embedkit_tsv_length(o.tsv))) AS len
          FROM old_rows o GROUP BY o.collection_id) d
    WHERE s.collection_id = d.collection_id;
    WITH d AS (
        SELECT o.collection_id, u.lexeme, count(*) AS n FROM old_rows o, unnest(o.tsv) u
        WHERE EXISTS (SELECT 1 FROM collections c WHERE c.id = o.collection_id) GROUP BY 1, 2
    ), upd AS (
        UPDATE keyword_terms t SET chunks = t.chunks - d.n FROM d
        WHERE t.collection_id = d.collection_id AND t.term = d.lexeme
        RETURNING t.collection_id, t.term, t.chunks
    )
    SELECT array_agg(upd.collection_id), array_agg(upd.term) INTO dead_cids, dead_terms FROM upd WHERE upd.chunks <= 0;
    IF dead_terms IS NOT NULL THEN
        DELETE FROM keyword_terms t USING unnest(dead_cids, dead_terms) AS g(cid, term)
        WHERE t.collection_id = g.cid AND t.term = g.term;
    END IF;
    WITH d AS (
        SELECT o.collection_id, u.lexeme, least(coalesce(array_length(u.positions, 1), 1), 8) AS tf,
               width_bucket(coalesce(o.keyword_len, embedkit_tsv_length(o.tsv)), {LENGTH_BUCKETS}) AS lenb,
               count(*) AS n
        FROM old_rows o, unnest(o.tsv) u
        WHERE EXISTS (SELECT 1 FROM collections c WHERE c.id = o.collection_id) GROUP BY 1, 2, 3, 4
    )
    , upd AS (
        UPDATE keyword_impacts t SET chunks = t.chunks - d.n FROM d
        WHERE t.collection_id = d.collection_id AND t.term = d.lexeme AND t.tf = d.tf AND t.lenb = d.lenb
        RETURNING t.collection_id, t.term, t.tf, t.lenb, t.chunks
    )
    SELECT array_agg(upd.collection_id), array_agg(upd.term), array_agg(upd.tf), array_agg(upd.lenb)
        INTO dead_cids, dead_terms, dead_tfs, dead_lenbs FROM upd WHERE upd.chunks <= 0;
    IF dead_terms IS NOT NULL THEN
        DELETE FROM keyword_impacts t
        USING unnest(dead_cids, dead_terms, dead_tfs, dead_lenbs) AS g(cid, term, tf, lenb)
        WHERE t.collection_id = g.cid AND t.term = g.term AND t.tf = g.tf AND t.lenb = g.lenb;
    END IF;
    RETURN NULL;
END
$fn$;
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE keyword_impacts (
            collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            term text NOT NULL,
            tf smallint NOT NULL,
            lenb smallint NOT NULL,
            chunks integer NOT NULL,
            PRIMARY KEY (collection_id, term, tf, lenb)
        )
        """
    )
    op.execute(IMPACT_KEYS)
    op.execute(ADD_STATS)
    op.execute(REMOVE_STATS)
    op.execute(
        "INSERT INTO keyword_impacts (collection_id, term, tf, lenb, chunks) "
        "SELECT c.collection_id, u.lexeme, least(coalesce(array_length(u.positions, 1), 1), 8), "
        f"width_bucket(coalesce(c.keyword_len, embedkit_tsv_length(c.tsv)), {LENGTH_BUCKETS}), count(*) "
        "FROM chunks c, unnest(c.tsv) u GROUP BY 1, 2, 3, 4"
    )
    op.execute("CREATE INDEX chunks_impact_gin ON chunks USING gin (embedkit_impact_keys(tsv))")


def downgrade() -> None:
    import importlib.util
    from pathlib import Path

    # the trigger functions as revision 0003 wrote them
    spec = importlib.util.spec_from_file_location("keyword_bm25", Path(__file__).with_name("0003_keyword_bm25.py"))
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.ADD_STATS)
    op.execute(previous.REMOVE_STATS)
    op.execute("DROP INDEX IF EXISTS chunks_impact_gin")
    op.execute("DROP FUNCTION IF EXISTS embedkit_impact_keys(tsvector)")
    op.execute("DROP TABLE IF EXISTS keyword_impacts")
