"""Operations routes: /health, /metrics, and OpenAI's model list."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from embedkit.server.errors import APIError
from embedkit.server.state import State

router = APIRouter()


@router.get("/health", summary="Readiness: 200 once the models are loaded, 503 before")
def health(state: State) -> JSONResponse:
    """`{"status": "ok"}` when ready; 503 with `{"status": "loading"}` (or `"error"` and the reason) before."""
    if state.models is not None:
        return JSONResponse({"status": "ok"})
    if state.load_error is not None:
        return JSONResponse({"status": "error", "error": {"message": state.load_error, "type": "server_error",
                                                          "param": None, "code": "model_load_failed"}},
                            status_code=503)
    return JSONResponse({"status": "loading", "error": {"message": "the models are still loading",
                                                        "type": "server_error", "param": None,
                                                        "code": "model_loading"}},
                        status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)")
def metrics(state: State) -> PlainTextResponse:
    """Requests, tokens in/out, queue depth, batch sizes, forwards and latency histograms."""
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_json(m) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "embedkit",
            "embedkit": {"kind": m.kind, "file": m.path.name, "aliases": sorted(m.aliases)}}


@router.get("/v1/models", summary="The loaded models (OpenAI's list)")
def list_models(state: State) -> dict:
    """`{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`."""
    return {"object": "list", "data": [_model_json(m) for m in state.require_models().all()]}


@router.get("/v1/models/{model:path}", summary="One loaded model")
def get_model(model: str, state: State) -> dict:
    """The model called `model`, or OpenAI's 404 `model_not_found`."""
    for m in state.require_models().all():
        if model in m.aliases:
            return _model_json(m)
    raise APIError(404, f"the model {model!r} does not exist or is not served here", "model_not_found", "model")
