"""The worker side of indexing on Ray: load the embedding model once per actor, chunk and embed documents.

Nothing here imports Ray: the driver (`embedkit.index.ray_executor`) wraps these classes in `ray.remote`,
so they can be tested and reused without a cluster. Workers receive texts and return the chunks' spans and
vectors (never the chunk texts: the driver holds the documents it sent and slices them itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedkit.index.chunk import chunk_text
from embedkit.index.extract import content_sha256

# One document's result: the skip reason, or (spans int64 [n, 3] of char_start, char_end, token_count,
# vectors float32 [n, dim]).
DocResult = str | tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ModelLoader:
    """Builds the embedder on a worker: `model` is a catalog name (resolved, and fetched if need be, on the
    worker) or a GGUF path that must exist on every node; `device` is cpu or cuda. The file is memory-mapped,
    once per actor."""

    model: str | None
    device: str = "cpu"

    def __call__(self) -> Any:
        from embedkit.backend.placement import make_placement
        from embedkit.catalog import resolve_model
        from embedkit.embed import Embedder

        placement = make_placement(self.device, None) if self.device != "cpu" else None
        return Embedder(resolve_model(self.model, kind="embed"), placement=placement)


@dataclass(frozen=True)
class GivenEmbedder:
    """Hands an already built, picklable embedder to the workers (a copy each)."""

    embedder: Any

    def __call__(self) -> Any:
        return self.embedder


def model_fingerprint(embedder: Any) -> tuple[str, int, str, bool]:
    """What must match between the driver's model and a worker's: content hash, dimension, pooling, norm."""
    return str(embedder.model_sha256), int(embedder.dim), str(embedder.pooling), bool(embedder.normalize)


def chunk_and_embed(embedder: Any, texts: Sequence[str], chunk_tokens: int, overlap: int,
                    batch_size: int, prefix: str = "") -> list[DocResult]:
    """Chunk each text as the single-process pipeline does and embed all their chunks in one call (each
    chunk behind the collection's document `prefix`, as the single-process pipeline embeds it)."""
    per_doc = [chunk_text(t, embedder.count_tokens, chunk_tokens, overlap) for t in texts]
    flat = [prefix + c.text for cs in per_doc for c in cs]
    vectors = np.asarray(embedder.embed(flat, batch_size=batch_size), dtype=np.float32) if flat else None
    out: list[DocResult] = []
    pos = 0
    for cs in per_doc:
        if not cs:
            out.append("no text")
            continue
        spans = np.array([(c.char_start, c.char_end, c.token_count) for c in cs], dtype=np.int64)
        out.append((spans, vectors[pos : pos + len(cs)]))
        pos += len(cs)
    return out


class EmbedWorker:
    """A Ray actor's state: one embedder and the collection's chunking."""

    def __init__(self, loader: Callable[[], Any], chunk_tokens: int, overlap: int, batch_size: int,
                 prefix: str = "") -> None:
        self.embedder = loader()
        self.chunk_tokens, self.overlap, self.batch_size, self.prefix = chunk_tokens, overlap, batch_size, prefix
        self.embedder.embed(["warm up"], batch_size=1)  # compile or load the kernels before the first batch

    def fingerprint(self) -> tuple[str, int, str, bool]:
        """See `model_fingerprint`."""
        return model_fingerprint(self.embedder)

    def embed_documents(self, texts: list[str]) -> list[DocResult]:
        """See `chunk_and_embed`."""
        return chunk_and_embed(self.embedder, texts, self.chunk_tokens, self.overlap, self.batch_size, self.prefix)


class DatasetEmbedder:
    """The callable class of Ray Data's `map_batches` over a dataset of texts (columns `key`, `text` and
    optionally `metadata`, a dict or a JSON string): unchanged texts (their hash is in `known`) are passed
    through as such, the others come out chunked and embedded, one row per document."""

    def __init__(self, loader: Callable[[], Any], chunk_tokens: int, overlap: int, batch_size: int,
                 known: Any, prefix: str = "") -> None:
        self.worker = EmbedWorker(loader, chunk_tokens, overlap, batch_size, prefix)
        if not isinstance(known, dict):  # an ObjectRef of the dict, shared by the actors through the object store
            import ray

            known = ray.get(known)
        self.known: dict[str, str] = known

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {k: [] for k in ("key", "status", "sha256", "size", "metadata", "fingerprint",
                                                     "chunk_texts", "spans", "vectors")}
        todo: list[int] = []
        for i, r in enumerate(rows):
            key, text = r.get("key"), r.get("text")
            meta = r.get("metadata")
            if isinstance(meta, str):
                meta = json.loads(meta) if meta.strip() else None
            ok = isinstance(key, str) and key and isinstance(text, str)
            data = text.encode("utf-8", "surrogatepass") if ok else b""
            sha = content_sha256(data)
            status = ("bad row" if not ok else "unchanged" if self.known.get(key) == sha
                      else "empty" if not text.strip() else "embed")
            if status == "embed":
                todo.append(i)
            out["key"].append(str(key))
            out["status"].append(status)
            out["sha256"].append(sha)
            out["size"].append(len(data))
            out["metadata"].append(json.dumps(meta or {}))
        results = dict(zip(todo, self.worker.embed_documents([rows[i]["text"].replace("\x00", "") for i in todo]),
                           strict=True))
        fp = json.dumps(self.worker.fingerprint())
        for i, r in enumerate(rows):
            res = results.get(i)
            if isinstance(res, str):
                out["status"][i] = res
            texts, spans, vecs = [], [], b""
            if isinstance(res, tuple):
                text = r["text"].replace("\x00", "")
                texts = [text[s:e] for s, e, _ in res[0].tolist()]
                spans, vecs = res[0].reshape(-1).tolist(), np.ascontiguousarray(res[1], np.float32).tobytes()
            out["fingerprint"].append(fp)
            out["chunk_texts"].append(texts)
            out["spans"].append(spans)
            out["vectors"].append(vecs)
        return pa.table({
            "key": pa.array(out["key"], pa.string()), "status": pa.array(out["status"], pa.string()),
            "sha256": pa.array(out["sha256"], pa.string()), "size": pa.array(out["size"], pa.int64()),
            "metadata": pa.array(out["metadata"], pa.string()),
            "fingerprint": pa.array(out["fingerprint"], pa.string()),
            "chunk_texts": pa.array(out["chunk_texts"], pa.list_(pa.string())),
            "spans": pa.array(out["spans"], pa.list_(pa.int64())), "vectors": pa.array(out["vectors"], pa.binary()),
        })
