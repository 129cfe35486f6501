"""The errors of :mod:`nas_service.client`: :class:`ClientError` and its kinds.

An error answer of the service (an RFC 9457 problem, ``application/problem+json``) becomes an
:class:`ApiError` subclass chosen by its status (:func:`error_from_response`), carrying the
problem's fields; a body that is not a problem (a proxy's HTML page) still gives one. Failures
on this side (no answer, a wait that gave up, a corrupt download) have their own classes.
``Retry-After`` is read here too (:func:`retry_after_seconds`), for the errors and the retries.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from nas_service.client.results import Job, Task

PROBLEM_PREFIX = "urn:nas-service:problem:"


class ClientError(Exception):
    """Base of every error :mod:`nas_service.client` raises."""


class ServiceUnreachable(ClientError):
    """No answer from the service after every retry (connection refused, dropped, timed out)."""


class WaitTimeout(ClientError, TimeoutError):
    """:meth:`Client.wait` (or :meth:`Client.wait_for_task`) gave up before the job finished;
    ``job`` is its last known state (the task's, for ``wait_for_task``)."""

    def __init__(self, message: str, job: Job | Task) -> None:
        super().__init__(message)
        self.job = job


class InvalidCheckpoint(ClientError):
    """A downloaded checkpoint does not match its ETag or is not a ``nas-checkpoint/1`` file."""


@dataclass(frozen=True)
class FieldError:
    """One entry of a validation problem's ``errors``: where (``location``, a JSON-pointer-like
    path into the request such as ``/body/graph/nodes/1/kernel_size``; the graph ``node`` and its
    ``field`` when known) and what."""

    location: str
    message: str
    node: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.location]
        if self.node is not None:
            where.append(f"node {self.node!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}"


class ApiError(ClientError):
    """The service answered with an error: an RFC 9457 problem (``application/problem+json``).

    ``status``, ``title``, ``detail``, ``type``, ``instance`` and ``errors`` are the problem's
    fields; ``extra`` holds any others (``job_id`` of a 409, ``checks`` of a 503 from /readyz);
    ``problem`` is the whole body. ``slug`` is the service's problem name (``invalid-graph``,
    ``not-found``...; ``None`` for ``about:blank``). The subclass tells the status family.
    """

    MAX_SHOWN_ERRORS = 10

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 type: str = "about:blank", instance: str | None = None,
                 errors: Sequence[FieldError] = (), extra: Mapping[str, Any] | None = None,
                 retry_after: float | None = None, method: str | None = None,
                 url: str | None = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.instance = instance
        self.errors = tuple(errors)
        self.extra = dict(extra or {})
        self.retry_after = retry_after
        self.method = method
        self.url = url
        super().__init__(self._message())

    @property
    def slug(self) -> str | None:
        return self.type[len(PROBLEM_PREFIX):] if self.type.startswith(PROBLEM_PREFIX) else None

    @property
    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            body["detail"] = self.detail
        if self.instance is not None:
            body["instance"] = self.instance
        if self.errors:
            body["errors"] = [dataclasses.asdict(e) for e in self.errors]
        body.update(self.extra)
        return body

    def _message(self) -> str:
        lines = [f"{self.status} {self.title}" + (f": {self.detail}" if self.detail else "")]
        lines += [f"  {e}" for e in self.errors[:self.MAX_SHOWN_ERRORS]]
        if len(self.errors) > self.MAX_SHOWN_ERRORS:
            lines.append(f"  ... and {len(self.errors) - self.MAX_SHOWN_ERRORS} more")
        return "\n".join(lines)


class BadRequest(ApiError):
    """400: malformed JSON, a bad cursor."""


class AuthenticationError(ApiError):
    """401 or 403: missing or invalid API key."""


class Unauthorized(AuthenticationError):
    """401: API keys are on and none valid was sent."""


class Forbidden(AuthenticationError):
    """403: the key is not allowed to do this."""


class NotFound(ApiError):
    """404: unknown id (``not-found``), or a candidate without weights (``no-checkpoint``)."""


class Conflict(ApiError):
    """409: an ``Idempotency-Key`` reused with another body (``extra["job_id"]`` names its job)."""


class PayloadTooLarge(ApiError):
    """413: the request body is over the service's limit."""


class ValidationError(ApiError):
    """422: invalid request or graph; ``errors`` locates each problem."""


class RateLimited(ApiError):
    """429, after every retry."""


class ServerError(ApiError):
    """5xx."""


class ServiceUnavailable(ServerError):
    """503 after every retry: not ready, busy, the task's data missing, out of memory."""


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: ValidationError, 429: RateLimited, 503: ServiceUnavailable}


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def error_from_response(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` subclass for an error response. A body that is not a problem (an
    HTML page from a proxy) still gives an error with the status and the start of the text."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()
        body = {"detail": text[:300] + ("..." if len(text) > 300 else "")} if text else {}
    known = {"type", "title", "status", "detail", "instance", "errors"}
    errors = []
    for e in body.get("errors") or ():
        if isinstance(e, Mapping):
            errors.append(FieldError(location=str(e.get("location", "")),
                                     message=str(e.get("message", "")),
                                     node=e.get("node"), field=e.get("field")))
    cls = _ERROR_CLASSES.get(status) or (ServerError if status >= 500 else ApiError)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    detail = body.get("detail")
    return cls(status, str(body.get("title") or reason),
               str(detail) if detail is not None else None,
               type=str(body.get("type") or "about:blank"), instance=body.get("instance"),
               errors=errors, extra={k: v for k, v in body.items() if k not in known},
               retry_after=retry_after_seconds(response.headers.get("Retry-After")),
               method=response.request.method if response.request else None,
               url=str(response.request.url) if response.request else None)
