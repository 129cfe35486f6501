"""A Python client for the nas-service ``/v1`` API (sync, on httpx).

Scripts and notebooks talk to a running service without writing HTTP by hand: answers come back
as frozen dataclasses mirroring the API's JSON, problem+json errors as typed exceptions, and a
downloaded checkpoint as a runnable ``torch.nn.Module``::

    from nas_service.client import Client, NotFound

    with Client("http://127.0.0.1:8000", api_key="...") as nas:
        result = nas.predict(my_torch_model)          # or a graph, or {"space": "cells", "seed": 3}
        print(result.accuracy, result.num_parameters, result.cached)

        job = nas.submit_search(space="cells", candidates=200, max_flops=50_000_000)
        job = nas.wait(job)                           # tqdm bar: candidates done / total
        best = nas.candidates(job, top=5)             # best first
        net = nas.download_checkpoint(best[0], path="best.safetensors")

Why these choices:

- **Retries.** A request that never reached the server (connection refused or dropped, connect
  timeout) and a ``503``/``429`` answer (the service is starting, busy, or rate limiting: it did
  no work) are retried with exponential backoff, honouring ``Retry-After``, at most ``retries``
  times. Every request this client sends is safe to repeat: ``POST /v1/architectures`` is keyed by
  the graph's content hash, :meth:`Client.submit_search` always sends an ``Idempotency-Key`` (a
  fresh one per call unless given), cancel is idempotent. A read timeout is *not* retried: the
  server is still working on the request, and sending it again would only queue more work.
- **Typed results.** The dataclasses carry exactly the API's fields (docs/api.md), plus
  ``Architecture.cached`` (the service answered 200 with a stored result instead of 201); unknown
  fields a newer server adds are ignored, so an old client keeps working.
- **Checkpoints are verified.** A download is checked against its ``ETag`` (the file's SHA-256)
  and its ``nas-checkpoint/1`` metadata before the network is rebuilt with ``to_module`` and
  ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from nas_service.version import __version__

if TYPE_CHECKING:
    import torch

    from nas_service.graph import ArchitectureGraph, GraphNetwork

__all__ = [
    "ApiError",
    "Architecture",
    "AuthenticationError",
    "BadRequest",
    "Budget",
    "Candidate",
    "CheckpointFile",
    "CheckpointLink",
    "Client",
    "ClientError",
    "Conflict",
    "Constraints",
    "FieldError",
    "Forbidden",
    "Hypernetwork",
    "InvalidCheckpoint",
    "Job",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "Ranking",
    "RateLimited",
    "Score",
    "ServerError",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "Task",
    "Unauthorized",
    "ValidationError",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "NAS_URL"
API_KEY_ENV = "NAS_API_KEY"
API_PREFIX = "/v1"
PROBLEM_PREFIX = "urn:nas-service:problem:"
CHECKPOINT_FORMAT = "nas-checkpoint/1"  # nas_service.search.checkpoints, without importing it
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 503})
PAGE_LIMIT = 500  # the API's largest page

# Errors that mean the request did not get an answer and may be sent again: it never reached the
# server (refused, unreachable, connect timeout) or the connection was dropped before a response.
_RETRY_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error this module raises."""


class ServiceUnreachable(ClientError):
    """No answer from the service after every retry (connection refused, dropped, timed out)."""


class WaitTimeout(ClientError, TimeoutError):
    """:meth:`Client.wait` gave up before the job finished; ``job`` is its last known state."""

    def __init__(self, message: str, job: Job) -> None:
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


def _retry_after_seconds(value: str | None) -> float | None:
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
               retry_after=_retry_after_seconds(response.headers.get("Retry-After")),
               method=response.request.method if response.request else None,
               url=str(response.request.url) if response.request else None)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    text = str(value)
    if text.endswith("Z"):  # Python 3.10's fromisoformat does not read "Z"
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (datetimes as ISO 8601 strings)."""
        return _jsonable(self)


@dataclass(frozen=True)
class Ranking(_Result):
    """The ranking head's estimate of trained accuracy: what search jobs rank candidates by."""

    value: float  # estimated accuracy after training, a fraction in [0, 1]
    name: str  # "ranking-head"
    target: str  # what it estimates, e.g. "test accuracy after 5 epochs of SGD"
    kendall_tau: float | None = None  # leave-one-out, on the architectures it was fit on

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ranking:
        return cls(value=float(data["value"]), name=data["name"], target=data["target"],
                   kendall_tau=data.get("kendall_tau"))


@dataclass(frozen=True)
class Score(_Result):
    """The surrogate accuracy and how it was measured."""

    value: float  # accuracy with the predicted weights, a fraction in [0, 1]
    name: str  # which score: "predicted-recalibrated"
    split: str
    images: int | None = None
    recalibration_images: int | None = None
    ranking: Ranking | None = None  # None when the service's GHN has no ranking head

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Score:
        ranking = data.get("ranking")
        return cls(value=float(data["value"]), name=data["name"], split=data["split"],
                   images=data.get("images"), recalibration_images=data.get("recalibration_images"),
                   ranking=Ranking.from_json(ranking) if ranking else None)


@dataclass(frozen=True)
class CheckpointLink(_Result):
    id: str  # SHA-256 of the file; also its ETag
    url: str  # relative to the service, e.g. /v1/architectures/<id>/checkpoint
    size_bytes: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointLink:
        return cls(id=data["id"], url=data["url"], size_bytes=data.get("size_bytes"))


@dataclass(frozen=True)
class Architecture(_Result):
    """A scored architecture (``POST /v1/architectures``, ``GET /v1/architectures/{id}``).

    ``cached``: ``True`` when :meth:`Client.predict` got the stored result of an earlier score
    (HTTP 200), ``False`` when the GHN scored it for this request (201), ``None`` when read with
    :meth:`Client.architecture`.
    """

    id: str
    content_hash: str
    task: str
    name: str | None
    num_parameters: int
    flops: int  # multiply-accumulates of one forward pass of one sample
    score: Score | None
    ghn_version: str | None
    timings: dict[str, float]  # seconds per stage when it was scored
    checkpoint: CheckpointLink | None
    created_at: datetime
    graph: dict[str, Any]
    cached: bool | None = None

    @property
    def accuracy(self) -> float | None:
        """The surrogate accuracy (``score.value``)."""
        return self.score.value if self.score else None

    @property
    def estimated_trained_accuracy(self) -> float | None:
        """The ranking head's estimate of trained accuracy (``score.ranking.value``): what
        searches rank by; ``None`` when the service's GHN has no ranking head."""
        return self.score.ranking.value if self.score and self.score.ranking else None

    @property
    def score_kind(self) -> str | None:
        return self.score.name if self.score else None

    @property
    def checkpoint_url(self) -> str | None:
        return self.checkpoint.url if self.checkpoint else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], cached: bool | None = None) -> Architecture:
        return cls(
            id=data["id"], content_hash=data["content_hash"], task=data["task"],
            name=data.get("name"), num_parameters=int(data["num_parameters"]),
            flops=int(data["flops"]),
            score=Score.from_json(data["score"]) if data.get("score") else None,
            ghn_version=data.get("ghn_version"),
            timings={k: float(v) for k, v in (data.get("timings") or {}).items()},
            checkpoint=(CheckpointLink.from_json(data["checkpoint"])
                        if data.get("checkpoint") else None),
            created_at=_datetime(data["created_at"]), graph=dict(data.get("graph") or {}),
            cached=cached)


@dataclass(frozen=True)
class Budget(_Result):
    candidates: int
    seconds: float | None = None


@dataclass(frozen=True)
class Constraints(_Result):
    max_parameters: int | None = None
    max_flops: int | None = None  # multiply-accumulates per sample


@dataclass(frozen=True)
class Progress(_Result):
    done: int
    total: int
    fraction: float


@dataclass(frozen=True)
class Candidate(_Result):
    """One candidate of a search job; ``status`` is ``scored``, ``rejected`` or ``failed``."""

    id: str
    job_id: str
    index: int
    status: str
    score: float | None
    reason: str | None
    num_parameters: int | None
    flops: int | None
    seconds: float | None
    architecture_id: str | None
    architecture_url: str | None
    checkpoint_url: str | None
    created_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            id=data["id"], job_id=data["job_id"], index=int(data["index"]),
            status=data["status"], score=data.get("score"), reason=data.get("reason"),
            num_parameters=data.get("num_parameters"), flops=data.get("flops"),
            seconds=data.get("seconds"), architecture_id=data.get("architecture_id"),
            architecture_url=data.get("architecture_url"),
            checkpoint_url=data.get("checkpoint_url"), created_at=_datetime(data["created_at"]))


@dataclass(frozen=True)
class Job(_Result):
    """A search job; ``status`` is ``queued``, ``running``, ``succeeded``, ``failed`` or
    ``cancelled``."""

    id: str
    status: str
    space: str
    task: str
    strategy: str
    seed: int
    budget: Budget
    constraints: Constraints
    progress: Progress
    rate: float | None  # candidates recorded per second of running time
    best_candidate: Candidate | None
    timings: dict[str, float | None]
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """``succeeded``, ``failed`` or ``cancelled``: the job will not change any more."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        budget, constraints, progress = (data["budget"], data.get("constraints") or {},
                                         data["progress"])
        best = data.get("best_candidate")
        return cls(
            id=data["id"], status=data["status"], space=data["space"], task=data["task"],
            strategy=data["strategy"], seed=int(data["seed"]),
            budget=Budget(candidates=int(budget["candidates"]), seconds=budget.get("seconds")),
            constraints=Constraints(max_parameters=constraints.get("max_parameters"),
                                    max_flops=constraints.get("max_flops")),
            progress=Progress(done=int(progress["done"]), total=int(progress["total"]),
                              fraction=float(progress["fraction"])),
            rate=data.get("rate"), best_candidate=Candidate.from_json(best) if best else None,
            timings=dict(data.get("timings") or {}), error=data.get("error"),
            attempts=int(data.get("attempts", 0)),
            cancel_requested=bool(data.get("cancel_requested", False)),
            created_at=_datetime(data["created_at"]), started_at=_datetime(data.get("started_at")),
            finished_at=_datetime(data.get("finished_at")), links=dict(data.get("links") or {}))


@dataclass(frozen=True)
class Task(_Result):
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    validation_images: int
    scored: bool  # a loaded hypernetwork scores this task
    data_available: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        return cls(name=data["name"], input_shape=tuple(int(s) for s in data["input_shape"]),
                   num_classes=int(data["num_classes"]),
                   class_names=tuple(data.get("class_names") or ()),
                   validation_images=int(data.get("validation_images", 0)),
                   scored=bool(data.get("scored")),
                   data_available=bool(data.get("data_available")))


@dataclass(frozen=True)
class Hypernetwork(_Result):
    task: str | None
    version: str
    path: str | None
    device: str
    parameters: int
    config: dict[str, Any]
    training: dict[str, Any]
    score: dict[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hypernetwork:
        return cls(task=data.get("task"), version=data["version"], path=data.get("path"),
                   device=data["device"], parameters=int(data["parameters"]),
                   config=dict(data.get("config") or {}),
                   training=dict(data.get("training") or {}), score=dict(data.get("score") or {}))


@dataclass(frozen=True)
class CheckpointFile:
    """A downloaded checkpoint: the safetensors bytes, their SHA-256 (checked against the
    ``ETag``), the metadata (``format``, ``graph``, ``content_hash``, ``task``, ``scores``,
    ``ghn_version``; all strings) and where it came from."""

    data: bytes = field(repr=False)
    sha256: str
    metadata: dict[str, str]
    url: str

    @property
    def graph(self) -> ArchitectureGraph:
        from nas_service.graph import ArchitectureGraph

        return ArchitectureGraph.from_json(self.metadata["graph"])

    @property
    def scores(self) -> dict[str, Any]:
        return json.loads(self.metadata.get("scores") or "{}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self.data)

    def module(self) -> GraphNetwork:
        """``to_module(graph)`` with these weights loaded (strict), in eval mode: the predicted
        parameters and recalibrated batch-norm statistics are what the score was measured with."""
        from nas_service.graph import to_module

        net = to_module(self.graph, initialize=False)
        net.load_state_dict(self.state_dict(), strict=True)
        return net.eval()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the file (complete or not at all: a temporary file renamed over ``path``)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(self.data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header length, then
    the JSON header. Raises :class:`InvalidCheckpoint` for anything else."""
    if len(data) < 8:
        raise InvalidCheckpoint("not a safetensors file: shorter than its header length")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise InvalidCheckpoint("not a safetensors file: the header is cut off")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise InvalidCheckpoint("not a safetensors file: the header is not JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (metadata or {}).items()}


# ------------------------------------------------------------------------------------------------
# Client
# ------------------------------------------------------------------------------------------------

GraphSource = Any
"""What :meth:`Client.predict` accepts: an ``ArchitectureGraph``, a ``nas-graph/1`` dict or JSON
text (``str``/``bytes``), a path to a graph JSON file, ``{"space": ..., "seed": ...}``, or a
``torch.nn.Module``."""

_R = TypeVar("_R")


def _ident(value: Any, kind: type) -> str:
    """The id of a result object, or the string itself."""
    if isinstance(value, kind):
        return value.id
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a {kind.__name__} or an id string, got {type(value).__name__}")


class Client:
    """A connection to one nas-service.

    ``base_url`` is the service's root (``http://host:8000``; a trailing ``/v1`` is accepted).
    ``api_key`` is sent as ``Authorization: Bearer <key>``. ``timeout`` bounds each request
    (seconds; scoring a large architecture on CPU can take a while). ``retries`` is how many times
    a request is re-sent after a connection error, a 503 or a 429, waiting ``backoff * 2**n``
    seconds (or the server's ``Retry-After``), at most ``max_backoff`` seconds each.

    Use it as a context manager, or call :meth:`close`. :meth:`from_env` reads ``NAS_URL`` and
    ``NAS_API_KEY``. ``transport`` is passed to httpx (tests give an ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        base = base_url.strip().rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[:-len(API_PREFIX)]
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        headers = {"User-Agent": f"nas-service-client/{__version__}",
                   "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout,
                                  transport=transport)
        self._sleep: Callable[[float], None] = time.sleep
        self._tasks: dict[str, Task] | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client for ``$NAS_URL`` (default ``http://127.0.0.1:8000``) with ``$NAS_API_KEY``."""
        return cls(os.environ.get(URL_ENV) or DEFAULT_URL,
                   os.environ.get(API_KEY_ENV) or None, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- transport -------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        retry_after = (_retry_after_seconds(response.headers.get("Retry-After"))
                       if response is not None else None)
        delay = retry_after if retry_after is not None else self.backoff * 2 ** attempt
        return min(delay, self.max_backoff)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, re-sent after connection errors, 503 and 429 (bounded); an error
        response raises its :class:`ApiError`."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except _RETRY_TRANSPORT as e:
                if attempt >= self.retries:
                    raise ServiceUnreachable(
                        f"cannot reach {self.base_url} ({method} {path}): {e or type(e).__name__}"
                        + (f" (after {attempt + 1} attempts)" if attempt else "")) from e
                delay = self._delay(attempt)
            except httpx.TimeoutException as e:
                raise ServiceUnreachable(
                    f"{method} {path}: no answer from {self.base_url} within the timeout "
                    f"({type(e).__name__}); the service may still be working on it, try a "
                    "larger timeout") from e
            except httpx.TransportError as e:
                raise ServiceUnreachable(f"{method} {path}: {e or type(e).__name__}") from e
            else:
                if response.status_code in RETRY_STATUSES and attempt < self.retries:
                    delay = self._delay(attempt, response)
                    response.close()
                elif response.is_error:
                    raise error_from_response(response)
                else:
                    return response
            self._sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> tuple[Any, httpx.Response]:
        response = self._send(method, path, **kwargs)
        try:
            return response.json(), response
        except ValueError:
            raise ClientError(f"{method} {path}: the service answered {response.status_code} "
                              "with a body that is not JSON") from None

    def _pages(self, path: str, params: dict[str, Any], parse: Callable[[Any], _R],
               limit: int | None) -> Iterator[_R]:
        """Items of a cursor-paginated listing, following ``next_cursor``, at most ``limit``."""
        seen = 0
        cursor: str | None = None
        while limit is None or seen < limit:
            page_size = PAGE_LIMIT if limit is None else min(PAGE_LIMIT, limit - seen)
            query = {**params, "limit": page_size, **({"cursor": cursor} if cursor else {})}
            body, _ = self._json("GET", path, params=query)
            for item in body["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield parse(item)
            cursor = body.get("next_cursor")
            if not cursor:
                return

    # ---- catalog ---------------------------------------------------------------------------

    def tasks(self) -> list[Task]:
        """Every task the service knows, with its input shape and whether it is scored."""
        body, _ = self._json("GET", f"{API_PREFIX}/tasks")
        tasks = [Task.from_json(t) for t in body]
        self._tasks = {t.name: t for t in tasks}
        return tasks

    def task(self, name: str) -> Task:
        """One task by name; the same spelling rules as the service (``fashion_mnist``,
        ``Fashion-MNIST``...)."""
        if self._tasks is None:
            self.tasks()
        assert self._tasks is not None
        key = name.strip().lower().replace("_", "-")
        for candidate in (name, key):
            if candidate in self._tasks:
                return self._tasks[candidate]
        try:  # aliases (cifar-10 -> cifar10) as this installation spells them
            from nas_service.data import DatasetError, get_task

            canonical = get_task(name).name
        except (ImportError, DatasetError):
            canonical = None
        if canonical in self._tasks:
            return self._tasks[canonical]
        raise ValueError(f"the service knows no task {name!r}; it knows: "
                         f"{', '.join(sorted(self._tasks))}")

    def hypernetworks(self) -> list[Hypernetwork]:
        """The GHN the service has loaded (an empty list when none)."""
        body, _ = self._json("GET", f"{API_PREFIX}/hypernetworks")
        return [Hypernetwork.from_json(h) for h in body]

    # ---- architectures ---------------------------------------------------------------------

    def _architecture_body(self, source: GraphSource, task: str,
                           input_shape: Sequence[int] | None) -> dict[str, Any]:
        import torch

        from nas_service.graph import ArchitectureGraph, from_module

        if isinstance(source, torch.nn.Module):
            shape = tuple(input_shape) if input_shape is not None else self.task(task).input_shape
            # The service builds what it scores: a module must convert exactly (no opaque nodes).
            return {"graph": from_module(source, shape, exact=True).to_dict()}
        if input_shape is not None:
            raise ValueError("input_shape applies to a torch.nn.Module only; a graph has its own")
        if isinstance(source, ArchitectureGraph):
            return {"graph": source.to_dict()}
        if isinstance(source, os.PathLike):
            source = Path(source).read_bytes()
        if isinstance(source, (str, bytes, bytearray)):
            try:
                source = json.loads(source)
            except ValueError as e:
                raise ValueError(f"not a JSON document: {e}") from None
        if isinstance(source, Mapping):
            if "space" in source or "seed" in source:
                unknown = set(source) - {"space", "seed"}
                if unknown:
                    raise ValueError("a sampled architecture is {'space': ..., 'seed': ...}; "
                                     f"unexpected keys: {', '.join(sorted(unknown))}")
                return {"space": source.get("space"), "seed": source.get("seed")}
            return {"graph": dict(source)}
        raise TypeError("predict() takes an ArchitectureGraph, a nas-graph/1 dict or JSON text, "
                        "a path to a graph file, {'space': ..., 'seed': ...} or a "
                        f"torch.nn.Module, not {type(source).__name__}")

    def predict(self, graph_or_module: GraphSource, task: str = "fashion-mnist",
                input_shape: Sequence[int] | None = None) -> Architecture:
        """Scores an architecture with GHN-predicted weights (``POST /v1/architectures``).

        A ``torch.nn.Module`` is converted with :func:`nas_service.from_module`, traced on
        ``input_shape`` (one sample's shape; default: the task's, from ``GET /v1/tasks``).
        Returns the :class:`Architecture`, ``cached=True`` when the service had already scored
        it. Raises :class:`ValidationError` for an invalid graph (its ``errors`` locate each
        problem) and ``nas_service.UnsupportedModuleError`` for a module that ``nas-graph/1``
        cannot express.
        """
        body = self._architecture_body(graph_or_module, task, input_shape)
        body["task"] = task
        data, response = self._json("POST", f"{API_PREFIX}/architectures", json=body)
        return Architecture.from_json(data, cached=response.status_code == 200)

    def architecture(self, architecture_id: str) -> Architecture:
        data, _ = self._json("GET", f"{API_PREFIX}/architectures/{architecture_id}")
        return Architecture.from_json(data)

    # ---- search jobs -----------------------------------------------------------------------

    def submit_search(self, space: str = "cells", *, candidates: int, seconds: float | None = None,
                      max_parameters: int | None = None, max_flops: int | None = None,
                      task: str = "fashion-mnist", seed: int = 0,
                      strategy: Literal["random", "evolution"] = "random",
                      idempotency_key: str | None = None) -> Job:
        """Queues a search job (``POST /v1/search-jobs``): ``candidates`` architectures from
        ``space``, within ``max_parameters``/``max_flops`` (MACs per sample), stopping after
        ``seconds`` if given.

        An ``Idempotency-Key`` is always sent (``idempotency_key``, else a random one for this
        call), so a retried request cannot queue the job twice; passing your own key makes a
        re-run of the same script return the job it created the first time.
        """
        constraints = {k: v for k, v in (("max_parameters", max_parameters),
                                         ("max_flops", max_flops)) if v is not None}
        budget: dict[str, Any] = {"candidates": candidates}
        if seconds is not None:
            budget["seconds"] = seconds
        body = {"space": space, "task": task, "strategy": strategy, "seed": seed,
                "budget": budget, "constraints": constraints}
        key = idempotency_key or f"client-{uuid.uuid4().hex}"
        data, _ = self._json("POST", f"{API_PREFIX}/search-jobs", json=body,
                             headers={"Idempotency-Key": key})
        return Job.from_json(data)

    def job(self, job: Job | str) -> Job:
        """The job's current state."""
        data, _ = self._json("GET", f"{API_PREFIX}/search-jobs/{_ident(job, Job)}")
        return Job.from_json(data)

    def jobs(self, status: str | None = None, limit: int | None = 100) -> list[Job]:
        """Jobs, newest first, optionally of one ``status``; at most ``limit`` (``None``: all)."""
        params = {"status": status} if status else {}
        return list(self._pages(f"{API_PREFIX}/search-jobs", params, Job.from_json, limit))

    def cancel(self, job: Job | str) -> Job:
        """Cancels a job: a queued one at once, a running one at its worker's next heartbeat
        (the returned job has ``cancel_requested``); a finished one is returned unchanged."""
        data, _ = self._json("POST", f"{API_PREFIX}/search-jobs/{_ident(job, Job)}/cancel")
        return Job.from_json(data)

    def wait(self, job: Job | str, progress: bool = True, poll: float = 1.0,
             timeout: float | None = None) -> Job:
        """Polls the job every ``poll`` seconds until it is finished (succeeded, failed or
        cancelled) and returns its final state; a failed job is returned, not raised (its
        ``error`` says why). With ``progress``, a tqdm bar on stderr counts candidates done out
        of the budget and shows the best score so far. Raises :class:`WaitTimeout` (with the
        last state) after ``timeout`` seconds; the job keeps running on the service."""
        current = job if isinstance(job, Job) else self.job(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=current.progress.total, unit="cand", desc=f"job {current.id[:8]}",
                       dynamic_ncols=True)
        try:
            while True:
                if bar is not None:
                    bar.total = current.progress.total
                    bar.update(current.progress.done - bar.n)
                    best = current.best_candidate
                    bar.set_postfix_str(current.status + (
                        f", best {best.score:.4f}" if best and best.score is not None else ""))
                if current.finished:
                    return current
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {current.id} is still {current.status} after "
                                      f"{timeout:g} s ({current.progress.done}/"
                                      f"{current.progress.total} candidates)", current)
                pause = poll if deadline is None else max(0.0, min(poll,
                                                                   deadline - time.monotonic()))
                self._sleep(pause)
                current = self.job(current.id)
        finally:
            if bar is not None:
                bar.close()

    def candidates(self, job: Job | str, top: int | None = None,
                   order: Literal["score", "index"] = "score") -> list[Candidate]:
        """The job's candidates: ``order="score"`` best first (unscored last, ties by index), or
        ``"index"``; the first ``top`` (``None``: all), fetching as many pages as needed."""
        if top is not None and top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        path = f"{API_PREFIX}/search-jobs/{_ident(job, Job)}/candidates"
        return list(self._pages(path, {"order_by": order}, Candidate.from_json, top))

    def candidate(self, candidate_id: str) -> Candidate:
        data, _ = self._json("GET", f"{API_PREFIX}/candidates/{candidate_id}")
        return Candidate.from_json(data)

    # ---- checkpoints -----------------------------------------------------------------------

    def _checkpoint_url(self, ref: Architecture | Candidate | str,
                        kind: Literal["auto", "architecture", "candidate"]) -> list[str]:
        if isinstance(ref, Architecture):
            if ref.checkpoint is None:
                raise NotFound(404, "No checkpoint", f"architecture {ref.id} has no checkpoint",
                               type=PROBLEM_PREFIX + "no-checkpoint")
            return [ref.checkpoint.url]
        if isinstance(ref, Candidate):
            if ref.checkpoint_url is None:
                raise NotFound(404, "No checkpoint",
                               f"candidate {ref.id} was {ref.status}, not scored: it has no "
                               "weights" + (f" ({ref.reason})" if ref.reason else ""),
                               type=PROBLEM_PREFIX + "no-checkpoint")
            return [ref.checkpoint_url]
        if not isinstance(ref, str):
            raise TypeError(f"expected an Architecture, a Candidate or an id, got "
                            f"{type(ref).__name__}")
        urls = {"architecture": f"{API_PREFIX}/architectures/{ref}/checkpoint",
                "candidate": f"{API_PREFIX}/candidates/{ref}/checkpoint"}
        if kind == "auto":
            return [urls["architecture"], urls["candidate"]]
        if kind not in urls:
            raise ValueError(f"kind must be auto, architecture or candidate, got {kind!r}")
        return [urls[kind]]

    def fetch_checkpoint(self, ref: Architecture | Candidate | str,
                         kind: Literal["auto", "architecture", "candidate"] = "auto"
                         ) -> CheckpointFile:
        """Downloads a checkpoint and checks it (SHA-256 against the ``ETag``, the
        ``nas-checkpoint/1`` metadata) without building the network.

        ``ref`` is an :class:`Architecture`, a :class:`Candidate`, or an id. Architecture and
        candidate ids have the same shape (32 hex digits, from different tables), so with
        ``kind="auto"`` an id is looked up as an architecture first, then as a candidate; a
        :class:`NotFound` is raised when it is neither.
        """
        urls = self._checkpoint_url(ref, kind)
        accept = {"Accept": "application/octet-stream"}
        response = None
        for url in urls[:-1]:  # kind="auto": the architecture route first
            try:
                response = self._send("GET", url, headers=accept)
                break
            except NotFound as e:
                if e.slug != "not-found":  # it exists, without weights: that is the answer
                    raise
        if response is None:
            try:
                response = self._send("GET", urls[-1], headers=accept)
            except NotFound as e:
                if len(urls) > 1 and e.slug == "not-found":
                    raise NotFound(404, "Not found", f"no architecture or candidate with id "
                                   f"{ref!r}", type=e.type, instance=e.instance) from None
                raise
        data = response.content
        sha256 = hashlib.sha256(data).hexdigest()
        etag = response.headers.get("ETag", "").removeprefix("W/").strip('"')
        if etag and etag != sha256:
            raise InvalidCheckpoint(f"{response.request.url}: the file's SHA-256 {sha256} is not "
                                    f"its ETag {etag} (corrupted in transit?)")
        metadata = safetensors_metadata(data)
        if metadata.get("format") != CHECKPOINT_FORMAT or "graph" not in metadata:
            raise InvalidCheckpoint(f"{response.request.url}: not a {CHECKPOINT_FORMAT} file "
                                    f"(format {metadata.get('format')!r})")
        return CheckpointFile(data=data, sha256=sha256, metadata=metadata,
                              url=str(response.request.url))

    def download_checkpoint(self, ref: Architecture | Candidate | str,
                            path: str | os.PathLike[str] | None = None,
                            kind: Literal["auto", "architecture", "candidate"] = "auto"
                            ) -> GraphNetwork:
        """Downloads the predicted weights of an architecture or a candidate and returns the
        runnable network (``to_module(graph)`` with the weights loaded, in eval mode). With
        ``path``, the safetensors file is saved there too (the graph JSON is in its metadata,
        so the file alone rebuilds the network). See :meth:`fetch_checkpoint` for ``kind``."""
        checkpoint = self.fetch_checkpoint(ref, kind)
        net = checkpoint.module()
        if path is not None:
            checkpoint.save(path)
        return net
