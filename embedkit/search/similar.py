"""Recommendations: documents nearest to a document's (or a chunk's) vector, itself excluded.

Each document keeps the normalised mean of its chunk vectors, with its own partial HNSW index, so this is
one indexed query at any collection size."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from embedkit.errors import InputError
from embedkit.index.keys import shown_path
from embedkit.search.sql import index_order_expr, set_hnsw
from embedkit.store.collections import CollectionInfo, display_name


@dataclass(frozen=True)
class DocumentHit:
    """A recommended document and its cosine similarity to the source."""

    path: str
    score: float
    document_id: int
    n_chunks: int

    def to_json(self) -> dict[str, Any]:
        """The document as a `--json` result object."""
        return asdict(self)


def source_vector(conn: psycopg.Connection, info: CollectionInfo, target: str | int) -> tuple[Any, int, str]:
    """(vector, document id to exclude, description) for a stored document path or a chunk id."""
    cid = int(info.id)
    if isinstance(target, int):
        row = conn.execute(
            "SELECT embedding, document_id FROM chunks WHERE collection_id = %s AND id = %s", (cid, target)
        ).fetchone()
        if row is None:
            raise InputError(f"no chunk {target} in collection {display_name(info.name)}")
        return row[0], row[1], f"chunk {target}"
    row = conn.execute(
        "SELECT embedding, id FROM documents WHERE collection_id = %s AND md5(path) = md5(%s) AND path = %s",
        (cid, target, target),
    ).fetchone()
    if row is None or row[0] is None:
        raise InputError(f"{target}: not a document of collection {display_name(info.name)} (index it first)")
    return row[0], row[1], target


def similar_documents(
    conn: psycopg.Connection,
    info: CollectionInfo,
    target: str | int,
    k: int = 10,
    ef_search: int | None = None,
) -> list[DocumentHit]:
    """The k documents most similar to `target` (a stored path, or a chunk id), excluding its document."""
    if not 1 <= k <= 999:
        raise InputError(f"-k must be between 1 and 999, got {k}")
    vec, exclude, _ = source_vector(conn, info, target)
    return nearest_documents(conn, info, vec, {exclude}, k, ef_search)


def nearest_documents(conn: psycopg.Connection, info: CollectionInfo, query: Any, exclude: set[int], k: int,
                      ef_search: int | None) -> list[DocumentHit]:
    """The k documents whose mean vector is nearest to `query`, leaving out the documents (ids) in `exclude`."""
    order = index_order_expr(info, "d.embedding")
    cid = int(info.id)
    n = k + len(exclude)
    # A few extra rows instead of a `d.id <> x` filter keep this a plain index scan.
    sql = (
        f"SELECT d.path, 1 - (d.embedding <=> %(q)s::vector), d.id, d.n_chunks, d.is_file FROM documents d "
        f"WHERE d.collection_id = {cid} AND d.embedding IS NOT NULL ORDER BY {order} LIMIT %(k)s"
    )
    if info.index_kind == "bit":
        sql = f"SELECT * FROM ({sql.replace('LIMIT %(k)s', 'LIMIT %(k)s * 10')}) x ORDER BY 2 DESC LIMIT %(k)s"
    with conn.transaction():
        set_hnsw(conn, n, ef_search, filtered=False)
        rows = conn.execute(sql, {"q": query, "k": n}).fetchall()
    return [DocumentHit(shown_path(r[0], r[4]), float(r[1]), r[2], r[3]) for r in rows if r[2] not in exclude][:k]
