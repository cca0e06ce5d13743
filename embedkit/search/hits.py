"""The result row of a search."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ChunkHit:
    """One search result: a chunk, its document's path, and its score (cosine similarity for vector search,
    BM25 for keyword search, the reciprocal-rank-fusion score for hybrid search). In document-level results
    the chunk is the document's best one and the score is the document's."""

    path: str
    score: float
    chunk_id: int
    text: str
    document_id: int
    ordinal: int
    char_start: int
    char_end: int

    def to_json(self) -> dict[str, Any]:
        """The chunk as a `--json` result object."""
        return asdict(self)
