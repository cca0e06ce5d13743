"""Search routes (embedkit's own JSON): search, collections, similar, recommend, and documents by key. The work
runs in worker threads through the same library functions as the CLI; query texts are embedded on the model's
worker thread."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from embedkit.index.keys import shown_path
from embedkit.index.models import model_identity
from embedkit.search.api import results_json, search, stored_key
from embedkit.search.recommend import recommend_documents
from embedkit.search.similar import similar_documents
from embedkit.search.sql import parse_metadata_filters
from embedkit.server.errors import APIError
from embedkit.server.models import BatchedEmbedder, EmbeddingModel
from embedkit.server.state import ServerState, State
from embedkit.store.collections import CollectionInfo, check_model, list_collections, mismatch, require_collection
from embedkit.store.reads import chunk_exists, document_chunks, get_document, list_documents

router = APIRouter(tags=["search"])


class ExampleRef(BaseModel):
    """A document (by key or id) or a chunk (by id)."""

    model_config = ConfigDict(extra="forbid")

    document: StrictStr | None = None
    document_id: StrictInt | None = None
    chunk_id: StrictInt | None = None

    @model_validator(mode="after")
    def _one(self) -> ExampleRef:
        if sum(v is not None for v in (self.document, self.document_id, self.chunk_id)) != 1:
            raise ValueError("give exactly one of document, document_id, chunk_id")
        return self


Example = StrictStr | StrictInt | ExampleRef


class SearchRequest(BaseModel):
    """The arguments of `embedkit search`."""

    query: StrictStr
    collection: str = "default"
    k: int = Field(10, ge=1, le=1000)
    hybrid: bool = False
    keyword: bool = Field(False, description="BM25 keyword ranking alone (as `search --keyword`).")
    chunks: bool = Field(False, description="Rank chunks instead of documents (as `search --chunks`).")
    rrf_k: float = Field(60.0, gt=0, description="Reciprocal rank fusion constant of hybrid search.")
    candidates: int = Field(100, ge=1, le=10000, description="Most chunks per ranking before fusion (4 per result).")
    path: str | None = Field(None, description="A folder or a glob with * and ? over document keys.")
    meta: dict[str, Any] | list[StrictStr] | None = Field(None, description="Metadata the documents must contain.")
    min_score: float | None = None
    ef_search: int | None = Field(None, ge=1, le=1000)


class SimilarRequest(BaseModel):
    """The arguments of `embedkit similar`."""

    target: Example
    collection: str = "default"
    k: int = Field(10, ge=1, le=999)
    ef_search: int | None = Field(None, ge=1, le=1000)


class RecommendRequest(BaseModel):
    """The arguments of `embedkit recommend`."""

    positive: list[Example] = Field(min_length=1)
    negative: list[Example] = Field(default_factory=list)
    collection: str = "default"
    k: int = Field(10, ge=1, le=999)
    ef_search: int | None = Field(None, ge=1, le=1000)


class DocumentPost(BaseModel):
    """One text to index under a key."""

    key: StrictStr
    text: StrictStr
    metadata: dict[str, Any] = Field(default_factory=dict)


def _embed_model(state: ServerState) -> EmbeddingModel:
    return state.require_models().find(None, "embed")


def _identity(model: EmbeddingModel):
    return model_identity(model.embedder, model.catalog_name, model.path)


def _collection(conn, state: ServerState, name: str, searched: bool = True) -> CollectionInfo:
    """The collection (404 if missing), checked to be built with the server's embedding model when searched."""
    info = require_collection(conn, name)
    if searched:
        check_model(info, _identity(_embed_model(state)))
    return info


def _resolve(conn, info: CollectionInfo, ex: Any) -> str | int:
    """An example as `similar_documents` takes it: a stored key (str) or a chunk id (int); 404 if absent."""
    if isinstance(ex, ExampleRef):
        if ex.document_id is not None:
            doc = get_document(conn, info.id, document_id=ex.document_id)
            if doc is None:
                raise APIError(404, f"no document {ex.document_id} in collection {info.name!r}",
                               "document_not_found")
            return doc.key
        ex = ex.document if ex.document is not None else ex.chunk_id
    if isinstance(ex, str):
        key = stored_key(conn, info.id, ex)
        if key is None:
            raise APIError(404, f"no document {ex!r} in collection {info.name!r}", "document_not_found")
        return key
    if not chunk_exists(conn, info.id, ex):
        raise APIError(404, f"no chunk {ex} in collection {info.name!r}", "chunk_not_found")
    return ex


@router.post("/v1/search", summary="Search a collection (as `embedkit search --json`)")
async def search_route(req: SearchRequest, state: State) -> dict:
    """`{"results": [{"path", "score", "chunk_id", "text", "document_id", "ordinal", "char_start", "char_end"}]}`."""
    model = _embed_model(state)
    if isinstance(req.meta, list):
        meta = parse_metadata_filters(req.meta) or None
    else:
        meta = req.meta or None

    def work() -> dict:
        store = state.store()
        with store.connect() as conn:
            _collection(conn, state, req.collection)
        hits = search(req.query, k=req.k, collection=req.collection, path_glob=req.path, metadata=meta,
                      min_score=req.min_score, hybrid=req.hybrid, ef_search=req.ef_search, store=store,
                      embedder=BatchedEmbedder(model), keyword=req.keyword, chunks=req.chunks, rrf_k=req.rrf_k,
                      candidates=req.candidates)
        return results_json(hits)

    return await run_in_threadpool(work)


@router.get("/v1/collections", summary="The collections of the store")
async def collections_route(state: State) -> dict:
    """Each collection with its model, dimension, index kind, counts, chunking, and whether it is searchable."""
    model = _embed_model(state) if state.require_models().embed is not None else None

    def work() -> dict:
        want = _identity(model) if model is not None else None
        with state.store().connect() as conn:
            rows = list_collections(conn)
        return {"collections": [
            {"name": c.name, "model": c.model.model_name, "dim": c.dim, "index": c.index_kind, "documents": nd,
             "chunks": nc, "chunk_tokens": c.chunk_tokens, "chunk_overlap": c.chunk_overlap,
             "searchable": want is not None and mismatch(c.model, want) is None}
            for c, nd, nc in rows]}

    return await run_in_threadpool(work)


@router.post("/v1/similar", summary="Documents similar to a document or chunk (as `embedkit similar --json`)")
async def similar_route(req: SimilarRequest, state: State) -> dict:
    """`{"results": [{"path", "score", "document_id", "n_chunks"}]}`, the target's document excluded."""

    def work() -> dict:
        with state.store().connect() as conn:
            info = _collection(conn, state, req.collection, searched=False)
            target = _resolve(conn, info, req.target)
            return results_json(similar_documents(conn, info, target, req.k, req.ef_search))

    return await run_in_threadpool(work)


@router.post("/v1/recommend", summary="Documents like the positive examples, unlike the negative ones")
async def recommend_route(req: RecommendRequest, state: State) -> dict:
    """Qdrant's average-vector strategy (query = 2·mean(positive) − mean(negative)), as `embedkit recommend --json`."""

    def work() -> dict:
        with state.store().connect() as conn:
            info = _collection(conn, state, req.collection, searched=False)
            pos = [_resolve(conn, info, e) for e in req.positive]
            neg = [_resolve(conn, info, e) for e in req.negative]
            return results_json(recommend_documents(conn, info, pos, neg, req.k, req.ef_search))

    return await run_in_threadpool(work)


@router.get("/v1/collections/{name}/documents", summary="A page of documents, or one document and its chunks")
async def documents_route(name: str, state: State, key: str | None = None, document_id: int | None = None,
                          limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict:
    """Without `key`/`document_id`: `{"documents": [...], "next_offset"}`. With one: the document and its chunks
    in order."""

    def work() -> dict:
        with state.store().connect() as conn:
            info = _collection(conn, state, name, searched=False)
            if key is None and document_id is None:
                docs = list_documents(conn, info.id, limit + 1, offset)
                more = len(docs) > limit
                return {"collection": info.name,
                        "documents": [{"document_id": d.document_id, "key": d.key,
                                       "path": shown_path(d.key, d.is_file), "n_chunks": d.n_chunks,
                                       "metadata": d.metadata} for d in docs[:limit]],
                        "next_offset": offset + limit if more else None}
            stored = stored_key(conn, info.id, key) if key is not None else None
            doc = get_document(conn, info.id, key=stored, document_id=document_id) if key is None or stored else None
            if doc is None:
                what = repr(key) if key is not None else str(document_id)
                raise APIError(404, f"no document {what} in collection {info.name!r}", "document_not_found")
            chunks = document_chunks(conn, info.id, doc.document_id)
            shown = {**doc.to_json(), "path": shown_path(doc.key, doc.is_file)}  # the key as search shows it
            return {"collection": info.name, "document": shown, "chunks": [c.to_json() for c in chunks]}

    return await run_in_threadpool(work)


@router.post("/v1/collections/{name}/documents", summary="Index a text under a key (as `embedkit index` a file)")
async def post_document_route(name: str, req: DocumentPost, state: State) -> JSONResponse:
    """Chunk, embed and store the text in one transaction: `{"collection", "key", "document_id", "outcome",
    "chunks"}` (201 when added)."""
    from embedkit.index.text import index_text

    model = _embed_model(state)

    def work():
        return index_text(state.store(), BatchedEmbedder(model), _identity(model), name, req.key, req.text,
                          req.metadata)

    done = await run_in_threadpool(work)
    body = {"collection": name, "key": req.key, "document_id": done.document_id, "outcome": done.outcome,
            "chunks": done.chunks}
    return JSONResponse(body, status_code=201 if done.outcome == "added" else 200)


@router.delete("/v1/collections/{name}/documents", summary="Remove a document by key")
async def delete_document_route(name: str, key: str, state: State) -> dict:
    """`{"collection", "key", "deleted": true}`, or 404 `document_not_found`."""
    from embedkit.store.writes import delete_documents

    def work() -> dict:
        with state.store().connect() as conn:
            info = _collection(conn, state, name, searched=False)
            stored = stored_key(conn, info.id, key)
            if stored is None or not delete_documents(conn, info.id, [stored]):
                raise APIError(404, f"no document {key!r} in collection {info.name!r}", "document_not_found")
        return {"collection": name, "key": key, "deleted": True}

    return await run_in_threadpool(work)
