-- Join with your own table: a reading list with priorities, ranked by how well each listed document
-- matches a query (its best chunk), then by priority.
--
--   psql "$(embedkit db url)" -v collection=default -v root="$PWD" -v query_vector='[...]' \
--        -f examples/sql/04_join_user_table.sql
-- (documents of files are stored under their absolute paths: the list names them below `root`)
SELECT id AS cid FROM collections WHERE name = :'collection' \gset
CREATE TEMP TABLE IF NOT EXISTS reading_list (
    path text PRIMARY KEY,
    priority integer NOT NULL
);
INSERT INTO reading_list (path, priority) VALUES
    (:'root' || '/examples/corpus/python/with-statement.txt', 1),
    (:'root' || '/examples/corpus/python/try-statement.txt', 2),
    (:'root' || '/examples/corpus/readmes/click.md', 3),
    (:'root' || '/examples/corpus/readmes/sqlalchemy.rst', 2)
ON CONFLICT (path) DO NOTHING;

SELECT r.path,
       r.priority,
       round(max(1 - (c.embedding <=> :'query_vector'::vector))::numeric, 4) AS best_score
FROM reading_list r
JOIN documents d ON d.path = r.path
JOIN chunks c ON c.collection_id = d.collection_id AND c.document_id = d.id
WHERE d.collection_id = :cid
GROUP BY r.path, r.priority
ORDER BY best_score DESC, r.priority;
