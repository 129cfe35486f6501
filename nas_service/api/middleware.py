"""ASGI middleware: the request-body limit and the request metrics.

Both are plain ASGI (no ``BaseHTTPMiddleware``), so they neither copy responses nor run the
endpoint in another task.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Problem
from .metrics import ServiceMetrics


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with a 413 problem, before any endpoint runs.

    Two checks, because a client may lie or say nothing: a ``Content-Length`` over the limit is
    refused without reading the body; otherwise the body is read here, counting bytes as they
    stream in, and refused as soon as the count passes the limit (chunked uploads included). The
    body read is then handed to the app unchanged. The limit bounds memory per request: at most
    ``max_bytes`` are ever buffered.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if int(length) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client is gone
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refuse(scope, receive, send, 413,
                           f"the request body is larger than {self.max_bytes} bytes",
                           slug="body-too-large")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                      slug: str = "malformed-request") -> None:
        # The rest of the body is not read: close the connection rather than drain it.
        response = Problem(status, detail, slug=slug, headers={"Connection": "close"}
                           ).response(scope.get("path"))
        await response(scope, receive, send)


class RequestMetrics:
    """Observes every HTTP request's latency in ``nas_http_request_duration_seconds``, labelled
    by the route's path template (``/v1/search-jobs/{job_id}``, never the raw path, so the number
    of series stays bounded), method and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_status)
        finally:
            self.metrics.request_seconds.observe(
                time.perf_counter() - started, method=scope.get("method", ""),
                route=_route_template(scope), status=str(status))


def _route_template(scope: dict[str, Any]) -> str:
    """``/v1/search-jobs/{job_id}`` for a request to ``/v1/search-jobs/abc``.

    ``scope["route"].path`` is the template inside the innermost router, without the prefixes
    of the routers that include it (``/search-jobs/{job_id}``): the prefix is what precedes
    the route's own part in the request path, which is fixed once the route matched.
    """
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return "unmatched"
    concrete = template
    for name, value in (scope.get("path_params") or {}).items():
        concrete = concrete.replace("{" + name + "}", str(value))
    path = scope.get("path", "")
    if concrete and path.endswith(concrete):
        return path[:len(path) - len(concrete)] + template
    return template


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
