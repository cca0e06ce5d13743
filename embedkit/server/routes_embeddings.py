"""POST /v1/embeddings, as OpenAI's: strings or token-id arrays in, float or base64 vectors out, concurrent
requests batched by the model's collector thread."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from embedkit.server.errors import APIError
from embedkit.server.models import EmbeddingModel
from embedkit.server.state import State

router = APIRouter()

# Inputs up to this many characters (or token ids) in all are tokenized on the event loop (~0.1 ms per 250
# characters): a hand-off to a worker thread costs more. Longer ones go to a thread, not to block the loop.
INLINE_TOKENIZE_CHARS = 4096

EmbeddingInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus `truncate` (embedkit's extension)."""

    model_config = ConfigDict(extra="allow")

    input: EmbeddingInput = Field(description="A string, a list of strings, a token-id array, or a list of them. "
                                              "Token ids are used as given (no special tokens are added).")
    model: str | None = Field(None, description="A loaded embedding model (default: the one loaded).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions and renormalise "
                                                           "(only for models trained for it).")
    user: str | None = None
    truncate: bool = Field(False, description="embedkit: cut inputs longer than the model's limit instead of "
                                              "answering 400.")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def _items(inp: EmbeddingInput) -> list[str | list[int]]:
    if isinstance(inp, str):
        return [inp]
    if not inp:
        raise APIError(400, "input is an empty list; expected at least one string or token array", "invalid_value",
                       "input")
    if isinstance(inp[0], int):
        return [list(inp)]  # one token array
    return list(inp)


def _token_ids(model: EmbeddingModel, items: list[str | list[int]], truncate: bool) -> list[list[int]]:
    """Each input's token ids, checked against the vocabulary and the model's token limit."""
    emb = model.embedder
    limit, vocab = emb.max_tokens, emb.tokenizer.vocab_size
    out = []
    for i, item in enumerate(items):
        where = "input" if len(items) == 1 else f"input[{i}]"
        if isinstance(item, str):
            ids = emb.tokenizer.encode(item, add_special=True)
            if len(ids) > limit and truncate:
                ids = emb.tokenize(item)  # the embedder's own truncation (keeps a final SEP/EOS)
        else:
            ids = list(item)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"{where}: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                               "invalid_value", "input")
            if len(ids) > limit and truncate:
                ids = ids[:limit]
        if not ids:
            raise APIError(400, f"{where} has no tokens; expected some text", "invalid_value", "input")
        if len(ids) > limit:
            raise APIError(400, f"{where} has {len(ids)} tokens, more than the model's limit of {limit} tokens "
                                "per input; shorten it, or send \"truncate\": true to cut it",
                           "context_length_exceeded", "input")
        out.append(ids)
    return out


def _apply_dimensions(model: EmbeddingModel, vecs: np.ndarray, dimensions: int | None) -> np.ndarray:
    dim = vecs.shape[1]
    if dimensions is None or dimensions == dim:
        return vecs
    if not model.supports_dimensions:
        raise APIError(400, f"the model {model.name!r} was not trained for shortened embeddings: 'dimensions' must "
                            f"be left out (or be {dim})", "dimensions_not_supported", "dimensions")
    if dimensions > dim:
        raise APIError(400, f"dimensions={dimensions} is more than the model's {dim}", "invalid_value", "dimensions")
    cut = vecs[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.where(norms > 0, norms, 1.0)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Create embeddings (OpenAI)")
async def create_embeddings(req: EmbeddingRequest, state: State) -> Response:
    """Vectors of each input, in order, with `usage.prompt_tokens`."""
    model = state.require_models().find(req.model, "embed")
    items = _items(req.input)
    limit = state.config.max_embedding_inputs
    if len(items) > limit:
        raise APIError(400, f"input has {len(items)} items, more than the limit of {limit} per request",
                       "too_many_inputs", "input")
    if sum(len(x) for x in items) <= INLINE_TOKENIZE_CHARS:
        seqs = _token_ids(model, items, req.truncate)
    else:
        seqs = await run_in_threadpool(_token_ids, model, items, req.truncate)
    vecs = await model.batcher.embed(seqs)
    vecs = _apply_dimensions(model, vecs, req.dimensions)
    state.metrics.embed_requests.inc(model=model.name)
    vecs = np.ascontiguousarray(vecs, dtype="<f4")
    if req.encoding_format == "base64":
        rows = [base64.b64encode(v.tobytes()).decode() for v in vecs]
    else:
        rows = list(vecs)  # float32 rows: orjson writes each number's shortest float32 form, which reads back exact
    n = sum(len(s) for s in seqs)
    return Response(orjson.dumps({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)],
        "model": model.name,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
