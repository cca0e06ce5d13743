"""Keyword (BM25) statistics: per-chunk length, per-collection term document frequencies and totals, kept
exact by triggers in the same transaction as the chunks they describe. Per-collection query and document
prefixes of the embedding model.

Revision ID: 0003_keyword_bm25
Revises: 0002_path_hash
Create Date: 2026-12-07
"""

from alembic import op

revision = "0003_keyword_bm25"
down_revision = "0002_path_hash"
branch_labels = None
depends_on = None

# Length of a chunk in indexing terms: lexeme occurrences of its tsvector (stopwords excluded), the `|d|` of
# Okapi BM25. A lexeme stored without positions counts once.
TSV_LENGTH = r"""
CREATE OR REPLACE FUNCTION embedkit_tsv_length(v tsvector) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::integer FROM unnest(v) u
$fn$;
"""

# chunks.tsv is a generated column, computed after BEFORE triggers run, so the length is computed here from
# the text with the same configuration as the generated column.
SET_LENGTH = r"""
CREATE OR REPLACE FUNCTION embedkit_chunks_set_keyword_len() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.keyword_len := embedkit_tsv_length(to_tsvector('english'::regconfig, NEW.text));
    RETURN NEW;
END
$fn$;
"""

# Statement-level triggers with transition tables: one aggregate per COPY or DELETE, not one per row.
# A collection being deleted (its row already gone when the cascade reaches its chunks) is skipped: its
# statistics rows go with it through their own foreign keys.
ADD_STATS = r"""
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
    RETURN NULL;
END
$fn$;
"""

REMOVE_STATS = r"""
CREATE OR REPLACE FUNCTION embedkit_keyword_remove() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    dead_cids bigint[];
    dead_terms text[];
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
    RETURN NULL;
END
$fn$;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE collections ADD COLUMN query_prefix text NOT NULL DEFAULT '', "
               "ADD COLUMN document_prefix text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE chunks ADD COLUMN keyword_len integer")  # NULL on older rows: computed when read
    op.execute(
        """
        CREATE TABLE keyword_stats (
            collection_id bigint PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
            chunks bigint NOT NULL,
            tokens bigint NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE keyword_terms (
            collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            term text NOT NULL,
            chunks integer NOT NULL,
            PRIMARY KEY (collection_id, term)
        )
        """
    )
    op.execute(TSV_LENGTH)
    op.execute(SET_LENGTH)
    op.execute(ADD_STATS)
    op.execute(REMOVE_STATS)
    # Statistics of the chunks already stored.
    op.execute(
        "INSERT INTO keyword_stats (collection_id, chunks, tokens) "
        "SELECT collection_id, count(*), sum(embedkit_tsv_length(tsv)) FROM chunks GROUP BY collection_id"
    )
    op.execute(
        "INSERT INTO keyword_terms (collection_id, term, chunks) "
        "SELECT c.collection_id, u.lexeme, count(*) FROM chunks c, unnest(c.tsv) u GROUP BY 1, 2"
    )
    op.execute(
        "CREATE TRIGGER chunks_keyword_len BEFORE INSERT OR UPDATE OF text ON chunks "
        "FOR EACH ROW EXECUTE FUNCTION embedkit_chunks_set_keyword_len()"
    )
    op.execute(
        "CREATE TRIGGER chunks_keyword_add AFTER INSERT ON chunks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION embedkit_keyword_add()"
    )
    op.execute(
        "CREATE TRIGGER chunks_keyword_remove AFTER DELETE ON chunks REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION embedkit_keyword_remove()"
    )
    # An UPDATE is a removal of the old rows and an addition of the new ones.
    op.execute(
        "CREATE TRIGGER chunks_keyword_update_remove AFTER UPDATE ON chunks REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION embedkit_keyword_remove()"
    )
    op.execute(
        "CREATE TRIGGER chunks_keyword_update_add AFTER UPDATE ON chunks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION embedkit_keyword_add()"
    )


def downgrade() -> None:
    for trig in ("chunks_keyword_update_add", "chunks_keyword_update_remove", "chunks_keyword_remove",
                 "chunks_keyword_add", "chunks_keyword_len"):
        op.execute(f"DROP TRIGGER IF EXISTS {trig} ON chunks")
    for fn in ("embedkit_keyword_remove()", "embedkit_keyword_add()", "embedkit_chunks_set_keyword_len()",
               "embedkit_tsv_length(tsvector)"):
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    op.execute("DROP TABLE IF EXISTS keyword_terms")
    op.execute("DROP TABLE IF EXISTS keyword_stats")
    op.execute("ALTER TABLE chunks DROP COLUMN IF EXISTS keyword_len")
    op.execute("ALTER TABLE collections DROP COLUMN IF EXISTS query_prefix, DROP COLUMN IF EXISTS document_prefix")
