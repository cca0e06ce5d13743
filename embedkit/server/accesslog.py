"""One JSON line per request on stderr (method, path, status, duration, bytes), and the request metrics."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedkit.server.metrics import ServerMetrics


class AccessLog:
    """ASGI middleware: log and count every HTTP request once its response is finished (or abandoned)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, stream=None) -> None:
        self.app = app
        self.metrics = metrics
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status, sent, finished = 500, 0, False

        async def watching_send(msg: Message) -> None:
            nonlocal status, sent, finished
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                sent += len(msg.get("body", b""))
                finished = not msg.get("more_body", False)
            await send(msg)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(route=label, status=str(status))
            self.metrics.latency.observe(seconds, route=label)
            client = scope.get("client")
            line = {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "ms": round(1000 * seconds, 2),
                "bytes": sent,
                "complete": finished,
            }
            out = self.stream or sys.stderr
            try:
                out.write(json.dumps(line) + "\n")
                out.flush()
            except (OSError, ValueError):
                pass
