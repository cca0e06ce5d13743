"""Recommendations from examples: documents like the positive examples and unlike the negative ones.

Qdrant's `average_vector` strategy: the query is `mean(positive) + (mean(positive) - mean(negative))`, i.e.
`2·mean(pos) − mean(neg)` (just `mean(pos)` without negatives), normalised; each example is a document (its
mean chunk vector) or a chunk (its vector). The documents nearest to the query by cosine come back through the
documents' own HNSW index, the examples' documents excluded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

from embedkit.errors import InputError
from embedkit.search.similar import DocumentHit, nearest_documents, source_vector
from embedkit.store.collections import CollectionInfo

MAX_EXAMPLES = 100


def recommendation_query(positive: Sequence[np.ndarray], negative: Sequence[np.ndarray]) -> np.ndarray:
    """The average-vector query: 2·mean(positive) − mean(negative), normalised (mean(positive) alone when there
    are no negatives)."""
    if not positive:
        raise InputError("recommendations need at least one positive example")
    pos = np.mean(np.asarray(positive, dtype=np.float64), axis=0)
    q = pos if not negative else 2.0 * pos - np.mean(np.asarray(negative, dtype=np.float64), axis=0)
    n = np.linalg.norm(q)
    if not n > 0:
        raise InputError("the positive and negative examples cancel out; give different examples")
    return (q / n).astype(np.float32)


def _array(vec) -> np.ndarray:
    """A stored vector (pgvector's Vector, or a sequence) as a numpy array."""
    return np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec, dtype=np.float64)


def recommend_documents(
    conn: psycopg.Connection,
    info: CollectionInfo,
    positive: Sequence[str | int],
    negative: Sequence[str | int] = (),
    k: int = 10,
    ef_search: int | None = None,
) -> list[DocumentHit]:
    """The k documents nearest to the average-vector query of the examples (stored paths, or chunk ids), the
    examples' documents excluded."""
    if not 1 <= k <= 999:
        raise InputError(f"-k must be between 1 and 999, got {k}")
    if len(positive) + len(negative) > MAX_EXAMPLES:
        raise InputError(f"{len(positive) + len(negative)} examples; at most {MAX_EXAMPLES} are allowed")
    pos = [source_vector(conn, info, t) for t in positive]
    neg = [source_vector(conn, info, t) for t in negative]
    query = recommendation_query([_array(v[0]) for v in pos], [_array(v[0]) for v in neg])
    return nearest_documents(conn, info, query, {v[1] for v in pos + neg}, k, ef_search)
