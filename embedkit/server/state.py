"""What the routes share: the configuration, the metrics, the models once loaded, and the store (opened on
first use, so a server that only embeds or generates never needs a database)."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request

from embedkit.server.config import ServerConfig
from embedkit.server.errors import APIError
from embedkit.server.metrics import ServerMetrics
from embedkit.server.models import ServedModels


class ServerState:
    """One server's shared state (`app.state.server`)."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.models: ServedModels | None = None
        self.load_error: str | None = None
        self._store: Any = None
        self._store_lock = threading.Lock()

    def require_models(self) -> ServedModels:
        """The loaded models, or 503 while they load (or after loading failed)."""
        if self.models is None:
            if self.load_error is not None:
                raise APIError(503, f"the models failed to load: {self.load_error}", "model_load_failed")
            raise APIError(503, "the models are still loading; retry shortly (GET /health says when ready)",
                           "model_loading", headers={"Retry-After": "1"})
        return self.models

    def store(self) -> Any:
        """The embedkit store (EMBEDKIT_DATABASE_URL or the embedded server), opened once (blocking: call it
        from a worker thread)."""
        with self._store_lock:
            if self._store is None:
                from embedkit.store import Store

                self._store = Store()
            return self._store

    def close(self) -> None:
        """Stop the model threads and close the store's connections."""
        if self.models is not None:
            self.models.close()
        if self._store is not None:
            self._store.close()


async def server_state(request: Request) -> ServerState:
    """The ServerState of the app that received `request` (a FastAPI dependency; async, so FastAPI calls it on
    the event loop instead of handing every request to a worker thread and back)."""
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
