"""Bearer-key authentication: with a key set, every route but /health needs `Authorization: Bearer KEY`."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from embedkit.server.errors import APIError
from embedkit.server.page import PAGE_PATHS

# the search page loads without a key (its API calls send one; its server-rendered routes check their own)
OPEN_PATHS = frozenset({"/health"}) | PAGE_PATHS


class BearerAuth:
    """ASGI middleware refusing requests without the right bearer key (401, OpenAI's shape)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._key is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        if given is not None and hmac.compare_digest(given.encode(), self._key):
            await self.app(scope, receive, send)
            return
        why = "no API key given: send the header 'Authorization: Bearer KEY'" if given is None \
            else "the API key is not valid"
        err = APIError(401, why, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await send_error(send, err)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def send_error(send: Send, err: APIError) -> None:
    """Answer an ASGI request with `err` (from middleware, before any route runs)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
