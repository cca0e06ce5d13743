-- More like this: documents most similar to a given document (by their mean vectors), itself excluded.
--
--   psql "$(embedkit db url)" -v collection=default -v path="$PWD/examples/corpus/python/with-statement.txt" \
--        -f examples/sql/02_more_like_this.sql
-- (documents of files are stored under their absolute paths)
WITH src AS (
    SELECT d.collection_id, d.id, d.embedding
    FROM documents d
    JOIN collections k ON k.id = d.collection_id
    WHERE k.name = :'collection' AND d.path = :'path'
)
SELECT d.path,
       round((1 - (d.embedding <=> src.embedding))::numeric, 4) AS score
FROM documents d, src
WHERE d.collection_id = src.collection_id AND d.id <> src.id
ORDER BY d.embedding::vector(384) <=> src.embedding::vector(384)
LIMIT 5;
