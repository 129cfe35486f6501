"""ASGI middleware: the request-body limit and read deadline, strict JSON bodies, and the request
metrics.

All are plain ASGI (no ``BaseHTTPMiddleware``), so they neither copy responses nor run the
endpoint in another task.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anyio
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

    A body must also arrive within ``read_seconds`` (``NAS_REQUEST_READ_SECONDS``): a client that
    stops sending half-way gets a 408 problem and its connection is closed, instead of holding
    the connection and its buffer open.

    ``upload_limits`` gives some paths (dataset uploads, ``POST /v1/tasks``) their own larger
    limit, in bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_seconds: float = 15.0,
                 upload_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds
        self.upload_limits = dict(upload_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.upload_limits.get(scope.get("path", ""), self.max_bytes)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if int(length) > max_bytes:
                await self._too_large(scope, receive, send, max_bytes)
                return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.read_seconds) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client is gone
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > max_bytes:
                    await self._too_large(scope, receive, send, max_bytes)
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            await self._refuse(scope, receive, send, 408,
                               f"the request body did not arrive within {self.read_seconds:g} s",
                               slug="request-timeout")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send,
                         max_bytes: int) -> None:
        await self._refuse(scope, receive, send, 413,
                           f"the request body is larger than {max_bytes} bytes",
                           slug="body-too-large")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                      slug: str = "malformed-request") -> None:
        # The rest of the body is not read: close the connection rather than drain it.
        response = Problem(status, detail, slug=slug, headers={"Connection": "close"}
                           ).response(scope.get("path"))
        await response(scope, receive, send)


class StrictJSONBody:
    """Refuses, with a 400 ``malformed-json`` problem before any endpoint runs, JSON bodies that
    a lenient parser would accept but that are ambiguous or cannot be stored:

    - bytes that are not UTF-8 (RFC 8259 section 8.1: JSON exchanged between systems is UTF-8;
      Python's parser would otherwise guess UTF-16 or UTF-32), a byte order mark included;
    - an object with the same key twice (which value wins is up to the parser);
    - a string with a lone surrogate escape (``"\\ud800"``): valid JSON text, but no UTF-8 can
      encode it, so a name or an id holding one could be stored but never sent back.

    It sees the body :class:`BodySizeLimit` buffered (one message), parses it once to check it and
    hands it on unchanged; bodies that are not JSON at all are left to the endpoint's parser,
    which answers them as before. Requests whose content type is not JSON pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(_header(scope, b"content-type")):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        problem = json_body_problem(body) if body else None
        if problem is not None:
            response = Problem(400, f"the request body is not acceptable JSON: {problem}",
                               slug="malformed-json", title="Malformed JSON",
                               errors=[{"location": "/body", "node": None, "field": None,
                                        "message": problem}]).response(scope.get("path"))
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_body_problem(body: bytes) -> str | None:
    """Why ``body`` is refused (see :class:`StrictJSONBody`), or ``None``: also ``None`` for a
    body that is not JSON at all, which the endpoint's parser reports in its own words."""
    if body.startswith(b"\xef\xbb\xbf"):
        return "a byte order mark is not allowed; send UTF-8 without one"
    if b"\x00" in body:
        # Never in JSON text (control characters are escaped inside strings); always in UTF-16
        # and UTF-32 encodings of its ASCII punctuation, which Python's parser would accept.
        return "a NUL byte: the body is not UTF-8 (UTF-16 or UTF-32?)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"the body is not UTF-8 (byte {e.start})"
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as e:
        return f"the key {str(e)[:64]!r} appears twice in one object"
    except (ValueError, RecursionError):
        return None
    if _SURROGATE_ESCAPE.search(body) and not _encodable(document):
        return ("a string holds a lone surrogate escape (\\ud800-\\udfff), which UTF-8 cannot "
                "encode")
    return None


def _encodable(document: Any) -> bool:
    """Whether every string (keys too) of a parsed document encodes as UTF-8."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # FastAPI parses a body without a content type as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


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
