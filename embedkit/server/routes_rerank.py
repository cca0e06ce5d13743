"""POST /v1/rerank (and /rerank, /v1/reranking, /reranking, as llama-server routes them): a cross-encoder scores
each document for the query, in the Jina/Cohere request and response shape llama-server speaks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from embedkit.server.errors import APIError
from embedkit.server.models import RerankModel
from embedkit.server.state import State

router = APIRouter(tags=["rerank"])


class RerankDocument(BaseModel):
    """A document given as an object (Jina and Cohere accept `{"text": ...}`)."""

    text: StrictStr


class RerankRequest(BaseModel):
    """Jina's and Cohere's rerank request, as llama-server takes it."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="The loaded reranking model (default: the one loaded).")
    query: StrictStr = Field(description="The text the documents are ranked for.")
    documents: list[StrictStr | RerankDocument] = Field(description="The texts to score, at least one.")
    top_n: StrictInt | None = Field(None, description="Return only the best N (default: all).")
    return_documents: StrictBool = Field(False, description="Include each document's text in its result.")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    model: str
    object: str = "list"
    usage: RerankUsage
    results: list[RerankResult]


def _check(req: RerankRequest, limit: int) -> list[str]:
    """The documents' texts; 400 naming the field for an empty query, no documents, too many, or a bad top_n."""
    if not req.query.strip():
        raise APIError(400, "query is empty; expected the text the documents are ranked for", "invalid_value",
                       "query")
    if not req.documents:
        raise APIError(400, "documents is an empty list; expected at least one string", "invalid_value",
                       "documents")
    if len(req.documents) > limit:
        raise APIError(400, f"documents has {len(req.documents)} items, more than the limit of {limit} per request",
                       "too_many_inputs", "documents")
    if req.top_n is not None and req.top_n < 1:
        raise APIError(400, f"top_n must be at least 1, got {req.top_n}", "invalid_value", "top_n")
    return [d if isinstance(d, str) else d.text for d in req.documents]


def _score(model: RerankModel, query: str, texts: list[str]) -> tuple[list[float], int]:
    """Scores (the classifier's first logit, as llama-server's `relevance_score`) and tokens read."""
    with model.lock:
        pairs = model.reranker.pairs(query, texts)
        logits = model.reranker.pair_logits(pairs)
    return [float(v) for v in logits[:, 0]], sum(len(ids) for ids, _ in pairs)


async def rerank_route(req: RerankRequest, state: State) -> dict[str, Any]:
    """`{"model", "object": "list", "usage", "results": [{"index", "relevance_score"}]}`, best first."""
    model = state.require_models().find(req.model, "rerank")
    texts = _check(req, state.config.max_rerank_documents)
    scores, tokens = await run_in_threadpool(_score, model, req.query, texts)
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[: req.top_n or len(texts)]
    results: list[dict[str, Any]] = []
    for i in order:
        r: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            r["document"] = {"text": texts[i]}
        results.append(r)
    return {"model": model.name, "object": "list", "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results}


for _path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking"):
    router.add_api_route(_path, rerank_route, methods=["POST"], response_model=RerankResponse,
                         response_model_exclude_none=True, include_in_schema=_path == "/v1/rerank",
                         summary="Rerank documents for a query with a cross-encoder (Jina/Cohere shape)")
