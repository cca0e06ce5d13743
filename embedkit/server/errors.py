"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure the server
answers: its own, FastAPI's validation errors, malformed JSON, unknown routes and embedkit's typed errors."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedkit.errors import (
    CollectionMismatchError,
    EmbedkitError,
    GenerationError,
    InputError,
    ModelNotFoundError,
    StoreError,
    TemplateError,
    TokenizerError,
)

log = logging.getLogger("embedkit.server")

# HTTP status -> OpenAI's error type
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answered as JSON in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """This error as a response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body (for places that cannot raise, e.g. inside a stream)."""
    return APIError(status, message, code, param).body()


def from_embedkit(e: EmbedkitError) -> APIError:
    """The HTTP answer to one of embedkit's typed errors."""
    if isinstance(e, CollectionMismatchError):
        return APIError(400, str(e), "collection_model_mismatch")
    if isinstance(e, StoreError):
        msg = str(e)
        if msg.startswith("no collection named"):
            return APIError(404, msg, "collection_not_found", "collection")
        return APIError(503, msg, "store_unavailable")
    if isinstance(e, ModelNotFoundError):
        return APIError(404, str(e), "model_not_found", "model")
    if isinstance(e, GenerationError):
        return APIError(400, str(e), "invalid_generation_request")
    if isinstance(e, (InputError, TemplateError, TokenizerError)):
        return APIError(400, str(e), "invalid_value")
    return APIError(400, str(e), type(e).__name__)


_TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict", "function", "nullable", "literal")


def _param_of(loc: tuple[Any, ...]) -> str | None:
    """The field a validation error is about, without pydantic's union-member tags (`str`, `list[int]`)."""
    # the first element says where (body, query string, path, header); a field may be called "query" itself
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)]
    parts = [p for p in parts if not (p.split("[")[0].split("-")[0] in _TYPE_TAGS or "[" in p)]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation errors (wrong types, missing fields, malformed JSON) as one 400."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request", "invalid_request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return APIError(400, f"the request body is not valid JSON ({ctx.get('error', 'parse error')})",
                        "invalid_json")
    loc = tuple(first.get("loc", ()))
    param = _param_of(loc)
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        return APIError(400, f"missing required parameter {param!r}", "missing_required_parameter", param)
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return APIError(400, "the request body must be a JSON object (Content-Type: application/json)",
                        "invalid_json")
    same = [e for e in errors if _param_of(tuple(e.get("loc", ()))) == param]
    if len(same) > 1:  # a union: none of its types matched
        msg = f"not any of the accepted types (e.g. {msg[0].lower() + msg[1:]})"
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{msg}", "invalid_value", param)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to an OpenAI-shaped JSON answer."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = APIError(404, f"no route {request.method} {request.url.path}", "unknown_url")
        elif exc.status_code == 405:
            err = APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                           "method_not_allowed")
        else:
            err = APIError(exc.status_code, str(exc.detail), None)
        return err.response()

    @app.exception_handler(EmbedkitError)
    async def _embedkit(_: Request, exc: EmbedkitError) -> JSONResponse:
        return from_embedkit(exc).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error ({type(exc).__name__})", "internal_error").response()
