"""embedkit's library API: index the example corpus, search it, find similar documents, and run SQL.

    python examples/library_api.py

Uses the embedded PostgreSQL under EMBEDKIT_HOME (or EMBEDKIT_DATABASE_URL) and the default embedding
model (all-MiniLM-L6-v2, fetched on first use)."""

from __future__ import annotations

from pathlib import Path

from embedkit.index import index
from embedkit.search import search, similar
from embedkit.store import Store

HERE = Path(__file__).resolve().parent


def main() -> None:
    report = index([HERE / "corpus"], collection="library-example")
    print(f"indexed: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")

    for hit in search("How do I run code when a block exits, even after an exception?", k=3,
                      collection="library-example"):
        print(f"{hit.score:.3f}  {hit.path}  #{hit.ordinal}")

    first = search("HNSW index for approximate nearest neighbours", k=1, collection="library-example")[0]
    print("documents like", first.path)
    for doc in similar(first.path, k=3, collection="library-example"):
        print(f"  {doc.score:.3f}  {doc.path}")

    # The store is plain PostgreSQL: query it with SQL (see examples/sql/ for more).
    with Store() as store, store.connect() as conn:
        rows = conn.execute(
            "SELECT d.path, count(*) FROM chunks c JOIN documents d "
            "ON d.collection_id = c.collection_id AND d.id = c.document_id "
            "JOIN collections k ON k.id = d.collection_id WHERE k.name = %s "
            "GROUP BY d.path ORDER BY count(*) DESC LIMIT 3",
            ("library-example",),
        ).fetchall()
        for path, n in rows:
            print(f"{n:4d} chunks  {path}")


if __name__ == "__main__":
    main()
