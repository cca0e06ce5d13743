-- Filtered search: nearest chunks among Markdown documents only (metadata->>'ext' = '.md').
-- hnsw.iterative_scan lets the index keep scanning until enough rows pass the filter (pgvector >= 0.8),
-- so a selective filter still returns 5 rows when 5 exist.
-- :'query_vector' is the query's embedding as a pgvector literal; see examples/library_api.py.
--
--   psql "$(embedkit db url)" -v collection=default -v query_vector='[...]' -f examples/sql/03_metadata_filter.sql
SELECT id AS cid FROM collections WHERE name = :'collection' \gset
BEGIN;
SET LOCAL hnsw.iterative_scan = relaxed_order;
SET LOCAL hnsw.ef_search = 100;

WITH hits AS MATERIALIZED (
    SELECT c.id, c.document_id, c.text, c.embedding <=> :'query_vector'::vector AS dist
    FROM chunks c
    WHERE c.collection_id = :cid
      AND c.document_id IN (SELECT id FROM documents
                            WHERE collection_id = :cid AND metadata @> '{"ext": ".md"}')
    ORDER BY c.embedding::vector(384) <=> :'query_vector'::vector(384)
    LIMIT 5
)
SELECT d.path, d.metadata ->> 'title' AS title, round((1 - h.dist)::numeric, 4) AS score
FROM hits h
JOIN documents d ON d.collection_id = :cid AND d.id = h.document_id
ORDER BY h.dist;
COMMIT;
