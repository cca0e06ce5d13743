"""SQLAlchemy 2 models of the store: collections, documents, chunks.

The tables themselves are created only by the Alembic migrations in `migrations/`; these classes
describe them for queries. `collection_id` leads every primary key, unique key and foreign key so the
schema can later be distributed by Citus with `collection_id` as the distribution column.

The `embedding` columns are `vector` without a dimension: one table holds collections of different
dimensions, and each collection gets its own partial HNSW index on `embedding::vector(d)` (or
`halfvec(d)`, or `binary_quantize(embedding)::bit(d)`), created by the migration-defined SQL function
`embedkit_ensure_vector_indexes(collection_id, dim)`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class Collection(Base):
    """A named set of documents embedded with one model (one dimension, pooling and normalisation)."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    model_name: Mapped[str] = mapped_column(Text)  # as the user named it (catalog name or path)
    model_file: Mapped[str] = mapped_column(Text)  # file name of the GGUF
    model_sha256: Mapped[str] = mapped_column(Text)  # GGUFFile.identity_sha256()
    architecture: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    pooling: Mapped[str] = mapped_column(Text)
    normalize: Mapped[bool] = mapped_column(Boolean)
    distance: Mapped[str] = mapped_column(Text, server_default="cosine")
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    query_prefix: Mapped[str] = mapped_column(Text, server_default="")  # prepended to queries before embedding
    document_prefix: Mapped[str] = mapped_column(Text, server_default="")  # prepended to chunks before embedding
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Document(Base):
    """One indexed file (or text stored under a key): its content hash (for incremental runs) and its mean
    vector (for `similar`)."""

    __tablename__ = "documents"
    __table_args__ = (
        # unique by a hash of the path: a b-tree entry of the path itself is limited to about 2,700 bytes
        Index("documents_path_md5", "collection_id", text("md5(path)"), unique=True),
        ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
    )

    collection_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    content_sha256: Mapped[str] = mapped_column(Text)
    mtime: Mapped[float] = mapped_column(Double)
    size: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    n_chunks: Mapped[int] = mapped_column(Integer)
    embedding = mapped_column(Vector(), nullable=True)  # normalised mean of the chunk vectors
    # the path is a file's canonical key (embedkit.index.keys), shown relative to the user's folder; else a
    # key given verbatim (index --jsonl, texts posted to the server)
    is_file: Mapped[bool] = mapped_column(Boolean, server_default="false")
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Chunk(Base):
    """A piece of a document: its text, character span in the extracted text, and embedding."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("collection_id", "document_id", "ordinal"),
        ForeignKeyConstraint(
            ["collection_id", "document_id"], ["documents.collection_id", "documents.id"], ondelete="CASCADE"
        ),
    )

    collection_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    document_id: Mapped[int] = mapped_column(BigInteger)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    embedding = mapped_column(Vector())
    tsv = mapped_column(TSVECTOR)  # generated: to_tsvector('english', text)
    keyword_len: Mapped[int | None] = mapped_column(Integer, nullable=True)  # lexeme occurrences (BM25 |d|)


class KeywordStats(Base):
    """Per-collection totals for BM25, kept by triggers on `chunks`: chunk count and total keyword length."""

    __tablename__ = "keyword_stats"
    __table_args__ = (ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),)

    collection_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chunks: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)


class KeywordTerm(Base):
    """Per-collection document frequency of a lexeme (how many chunks hold it), kept by triggers on `chunks`."""

    __tablename__ = "keyword_terms"
    __table_args__ = (ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),)

    collection_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    term: Mapped[str] = mapped_column(Text, primary_key=True)
    chunks: Mapped[int] = mapped_column(Integer)
