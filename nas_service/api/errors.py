"""Every error the API returns is an RFC 9457 problem (``application/problem+json``)::

    {"type": "urn:nas-service:problem:invalid-graph", "title": "Invalid architecture graph",
     "status": 422, "detail": "2 problems", "instance": "/v1/architectures",
     "errors": [{"location": "/body/graph/nodes/3/kernel_size", "node": "conv1",
                 "field": "kernel_size", "message": "..."}]}

``type`` is ``about:blank`` for plain HTTP statuses (404 on an unknown path, 405) and a
``urn:nas-service:problem:<slug>`` for the service's own problems, listed in ``docs/api.md``.
``errors`` appears on validation problems only.

Handlers installed by :func:`install_error_handlers`: :class:`Problem` (raised by the routers),
FastAPI's ``RequestValidationError`` (422, or 400 for a body that is not JSON), Starlette's
``HTTPException`` (FastAPI's own 404/405/400) and a catch-all that logs the exception and answers
a 500 problem without details. The catch-all is a bug detector: the hostile-input tests require
that nothing reaches it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nas_service.db import UnstorableValue
from nas_service.graph import GraphProblem

log = logging.getLogger("nas_service.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:nas-service:problem:"


def problem_type(slug: str) -> str:
    return TYPE_PREFIX + slug


class Problem(Exception):
    """An error response. ``slug`` names the problem type (``None``: ``about:blank``)."""

    def __init__(self, status: int, detail: str | None = None, *, slug: str | None = None,
                 title: str | None = None, errors: Sequence[Mapping[str, Any]] | None = None,
                 headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail or "")
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or _reason(status)
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": problem_type(self.slug) if self.slug else "about:blank",
                                "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), status_code=self.status,
                            headers=self.headers or None, media_type=PROBLEM_MEDIA_TYPE)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_DESCRIPTIONS = {400: "malformed request (e.g. the body is not JSON, a bad cursor)",
                 401: "missing or invalid API key", 404: "unknown id", 409: "conflict",
                 413: "request body too large", 422: "invalid request",
                 503: "not ready, or busy: retry later"}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for problem answers."""
    return {code: {"description": _DESCRIPTIONS.get(code, _reason(code)),
                   "content": {PROBLEM_MEDIA_TYPE: {}}} for code in codes}


def not_found(what: str, ident: str) -> Problem:
    shown = ident if len(ident) <= 64 else ident[:64] + "..."
    return Problem(404, f"no {what} with id {shown!r}", slug="not-found",
                   title=f"{what[0].upper()}{what[1:]} not found")


_ID = re.compile(r"[0-9a-f]{32}")


def require_id(what: str, ident: str) -> str:
    """``ident`` if it has the shape of an id (32 lowercase hex digits); a 404 problem
    otherwise, before any query: a string that cannot be an id names nothing, and some (a NUL
    byte) PostgreSQL would refuse as a query parameter."""
    if not _ID.fullmatch(ident):
        raise not_found(what, ident)
    return ident


def field_error(location: str, message: str, *, node: str | None = None,
                field: str | None = None) -> dict[str, Any]:
    """One entry of a problem's ``errors``."""
    return {"location": location, "node": node, "field": field, "message": message}


def graph_problems(problems: Iterable[GraphProblem], prefix: str) -> list[dict[str, Any]]:
    """A graph's validation problems as ``errors`` entries, located under ``prefix``
    (``/body/graph``)."""
    out = []
    for p in problems:
        location = p.location()
        out.append(field_error(prefix + ("" if location == "/" else location), p.message,
                               node=p.node, field=p.field))
    return out


def _location(loc: Sequence[Any]) -> str:
    return "/" + "/".join(str(part) for part in loc)


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI/pydantic error dicts as ``errors`` entries (no ``input``: it may be huge)."""
    out = []
    for e in errors:
        loc = [part for part in e.get("loc", ()) if part is not None]
        names = [part for part in loc if isinstance(part, str)]
        out.append(field_error(_location(loc), str(e.get("msg", "invalid value")),
                               field=names[-1] if len(names) > 1 else None))
    return out


async def _problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return exc.response(request.url.path)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc", ())
            position = loc[-1] if loc and isinstance(loc[-1], int) else None
            why = str((e.get("ctx") or {}).get("error", "JSON decode error"))
            message = f"{why} at character {position}" if position is not None else why
            return Problem(400, f"the request body is not valid JSON: {message}",
                           slug="malformed-json", title="Malformed JSON",
                           errors=[field_error("/body", message)]).response(request.url.path)
    return Problem(422, f"{len(errors)} invalid field(s) in the request", slug="invalid-request",
                   title="Invalid request", errors=validation_errors(errors)
                   ).response(request.url.path)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path!r}"
    slug = "malformed-body" if exc.status_code == 400 else None
    return Problem(exc.status_code, detail, slug=slug,
                   headers=getattr(exc, "headers", None)).response(request.url.path)


async def _data_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (PostgreSQL: NUL in text, an integer out
    # of range). Validation should have caught it first: logged, so the gap gets closed.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0])
    return Problem(400, "the request carries a value the database cannot store",
                   slug="invalid-value", title="Invalid value").response(request.url.path)


async def _unstorable_handler(request: Request, exc: Exception) -> JSONResponse:
    # The storage layer's net (nas_service.db.storable) caught a value validation let through:
    # nothing was written. Logged, so the gap gets closed.
    log.warning("refused to store a value on %s %s: %s", request.method, request.url.path, exc)
    return Problem(422, str(exc), slug="invalid-value", title="Invalid value"
                   ).response(request.url.path)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    counter = getattr(request.app.state, "unhandled_errors", None)
    if counter is not None:
        counter.inc()
    return Problem(500, "an unexpected error occurred; it was logged", slug="internal-error"
                   ).response(request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(DataError, _data_error_handler)
    app.add_exception_handler(UnstorableValue, _unstorable_handler)
    # Exception: Starlette's outermost ServerErrorMiddleware answers with this, then re-raises so
    # the server logs it too (and tests using ASGITransport see it).
    app.add_exception_handler(Exception, _unhandled_handler)
