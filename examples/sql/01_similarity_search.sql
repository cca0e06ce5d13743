-- Similarity search: the 5 chunks nearest to a query vector, through the collection's HNSW index.
--
--   psql "$(embedkit db url)" -v collection=default -v query_vector='[...]' -f examples/sql/01_similarity_search.sql
--
-- :'query_vector' is the query's embedding as a pgvector literal ('[0.01,-0.2,...]'); examples/library_api.py
-- shows how to get one in Python.
-- The index of a collection is a partial
-- HNSW index on embedding::vector(384) (384 = the dimension of the default model, all-MiniLM-L6-v2): the
-- ORDER BY must use that same cast, and collection_id must be a constant (hence \gset), for Postgres to use the index.
SELECT id AS cid FROM collections WHERE name = :'collection' \gset
SET hnsw.ef_search = 100;

SELECT d.path,
       c.ordinal,
       round((1 - (c.embedding <=> :'query_vector'::vector))::numeric, 4) AS score,
       left(regexp_replace(c.text, '\s+', ' ', 'g'), 100) AS snippet
FROM chunks c
JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id
WHERE c.collection_id = :cid
ORDER BY c.embedding::vector(384) <=> :'query_vector'::vector(384)
LIMIT 5;
