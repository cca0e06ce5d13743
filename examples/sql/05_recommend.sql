-- Recommendations from examples (Qdrant's average_vector strategy, as `embedkit recommend` and POST /v1/recommend):
-- documents like the positive documents and unlike the negative ones. The query vector is
-- mean(positive) + (mean(positive) - mean(negative)) over the documents' own (mean) vectors; cosine ignores its
-- length. The examples themselves are left out.
--
--   psql "$(embedkit db url)" -v collection=default \
--        -v positive="{$PWD/examples/corpus/python/with-statement.txt}" \
--        -v negative="{$PWD/examples/corpus/python/try-statement.txt}" -f examples/sql/05_recommend.sql
-- (documents of files are stored under their absolute paths)
WITH k AS (
    SELECT id FROM collections WHERE name = :'collection'
), pos AS (
    SELECT avg(d.embedding) AS v FROM documents d, k
    WHERE d.collection_id = k.id AND d.path = ANY (:'positive'::text[])
), neg AS (
    SELECT avg(d.embedding) AS v FROM documents d, k
    WHERE d.collection_id = k.id AND d.path = ANY (:'negative'::text[])
), q AS (
    SELECT CASE WHEN neg.v IS NULL THEN pos.v ELSE pos.v + (pos.v - neg.v) END AS v FROM pos, neg
)
SELECT d.path,
       round((1 - (d.embedding <=> q.v))::numeric, 4) AS score
FROM documents d, k, q
WHERE d.collection_id = k.id
  AND d.path <> ALL (:'positive'::text[]) AND d.path <> ALL (:'negative'::text[])
ORDER BY d.embedding::vector(384) <=> q.v::vector(384)
LIMIT 5;
