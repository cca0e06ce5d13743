"""The app factory: routes, error handlers, middleware (access log, auth, body limit), and the models loading
in the background while /health answers 503."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from embedkit import __version__
from embedkit.server.accesslog import AccessLog
from embedkit.server.auth import BearerAuth
from embedkit.server.config import ServerConfig
from embedkit.server.errors import install_error_handlers
from embedkit.server.limits import BodyLimit
from embedkit.server.metrics import ServerMetrics
from embedkit.server.models import ServedModels, load_models
from embedkit.server.state import ServerState

log = logging.getLogger("embedkit.server")


def _load_in_background(state: ServerState, loader: Callable[[], ServedModels],
                        on_failure: Callable[[], None] | None) -> threading.Thread:
    def work() -> None:
        try:
            state.models = loader()
            # the models' objects (vocabularies, metadata, compiled kernels) live as long as the server: out of
            # the cyclic collector's passes, which otherwise walk them all on each full collection (perf, serving
            # MiniLM at 32 concurrent requests: ~8% of the server's CPU in gc_collect_main and its visitors)
            gc.freeze()
        except Exception as e:  # noqa: BLE001 - reported by /health and on stderr
            state.load_error = f"{type(e).__name__}: {e}" if not str(e) else str(e)
            print(f"error: the models failed to load: {state.load_error}", file=sys.stderr, flush=True)
            if on_failure is not None:
                on_failure()

    t = threading.Thread(target=work, name="embedkit-load", daemon=True)
    t.start()
    return t


def create_app(config: ServerConfig, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app for `config`; the models start loading when the app starts (lifespan)."""
    from embedkit.server import page, routes_embeddings, routes_generation, routes_ops, routes_rerank, routes_search

    metrics = ServerMetrics()
    state = ServerState(config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _load_in_background(state, lambda: load_models(config, metrics), on_load_failure)
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="embedkit",
        version=__version__,
        description="OpenAI-compatible embeddings and generation, and search over embedkit collections.",
        lifespan=lifespan,
    )
    app.state.server = state
    install_error_handlers(app)
    for module in (routes_ops, routes_embeddings, routes_generation, routes_rerank, routes_search, page):
        app.include_router(module.router)
    # added innermost first: AccessLog sees every answer, auth runs before the body is read
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=config.api_key)
    app.add_middleware(AccessLog, metrics=metrics)
    return app
