"""The :class:`Client`: one connection to a nas-service over httpx.

- **Retries.** A request that never reached the server (connection refused or dropped, connect
  timeout) and a ``503``/``429`` answer (the service is starting, busy, or rate limiting: it did
  no work) are retried with exponential backoff, honouring ``Retry-After``, at most ``retries``
  times. Every request this client sends is safe to repeat: ``POST /v1/architectures`` is keyed by
  the graph's content hash, :meth:`Client.submit_search` always sends an ``Idempotency-Key`` (a
  fresh one per call unless given), cancel is idempotent. A read timeout is *not* retried: the
  server is still working on the request, and sending it again would only queue more work.
- **Waiting.** :meth:`Client.wait` polls a search job until it finishes, with a tqdm bar.
- **Checkpoints are verified.** A download is checked against its ``ETag`` (the file's SHA-256)
  and its ``nas-checkpoint/1`` metadata before the network is rebuilt with ``to_module`` and
  ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from nas_service.client.checkpoint import CHECKPOINT_FORMAT, CheckpointFile, safetensors_metadata
from nas_service.client.errors import (
    PROBLEM_PREFIX,
    ClientError,
    InvalidCheckpoint,
    NotFound,
    ServiceUnreachable,
    WaitTimeout,
    error_from_response,
    retry_after_seconds,
)
from nas_service.client.results import Architecture, Candidate, Hypernetwork, Job, Task
from nas_service.version import __version__

if TYPE_CHECKING:
    from nas_service.graph import GraphNetwork

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "NAS_URL"
API_KEY_ENV = "NAS_API_KEY"
API_PREFIX = "/v1"
RETRY_STATUSES = frozenset({429, 503})
PAGE_LIMIT = 500  # the API's largest page

# Errors that mean the request did not get an answer and may be sent again: it never reached the
# server (refused, unreachable, connect timeout) or the connection was dropped before a response.
_RETRY_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


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
        retry_after = (retry_after_seconds(response.headers.get("Retry-After"))
                       if response is not None else None)
        delay = retry_after if retry_after is not None else self.backoff * 2 ** attempt
        return min(delay, self.max_backoff)

    def _send(self, method: str, path: str, *, retry: bool = True,
              **kwargs: Any) -> httpx.Response:
        """One request, re-sent after connection errors, 503 and 429 (bounded; never with
        ``retry=False``); an error response raises its :class:`ApiError`."""
        retries = self.retries if retry else 0
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except _RETRY_TRANSPORT as e:
                if attempt >= retries:
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
                if response.status_code in RETRY_STATUSES and attempt < retries:
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

    def registered_task(self, name: str) -> Task:
        """Task ``name`` as the service has it now (``GET /v1/tasks/{name}``): for a registered
        task, its adaptation's status and progress."""
        body, _ = self._json("GET", f"{API_PREFIX}/tasks/{quote(name, safe='')}")
        task = Task.from_json(body)
        if self._tasks is not None:
            self._tasks[task.name] = task
        return task

    def add_task(self, name: str, files: Sequence[str | os.PathLike[str] | tuple[str, bytes]],
                 *, num_classes: int | None = None) -> Task:
        """Register a task by uploading its dataset (``POST /v1/tasks``): one ``.npz`` with
        ``x``/``y``, MNIST idx files, or CIFAR-10 python batches (or their ``.tar.gz``); each
        file a path or ``(filename, bytes)``. The service then adapts its GHN to the task:
        :meth:`wait_for_task` follows it. Not re-sent on its own after a connection error (a
        second registration of the name would be refused): call it again, or look the task up
        with :meth:`registered_task`."""
        parts = []
        for f in files:
            if isinstance(f, tuple):
                parts.append(("files", (f[0], f[1])))
            else:
                path = Path(f)
                parts.append(("files", (path.name, path.read_bytes())))
        data = {"name": name}
        if num_classes is not None:
            data["num_classes"] = str(num_classes)
        body, _ = self._json("POST", f"{API_PREFIX}/tasks", retry=False, data=data, files=parts)
        task = Task.from_json(body)
        self._tasks = None  # the list changed
        return task

    def wait_for_task(self, name: str, progress: bool = True, poll: float = 1.0,
                      timeout: float | None = None) -> Task:
        """Polls a registered task until its adaptation finished and returns it (``scored``
        once it succeeded; a failed adaptation is returned, its ``adaptation.error`` says why).
        With ``progress``, a tqdm bar counts adaptation steps. Raises :class:`WaitTimeout`
        after ``timeout`` seconds."""
        task = self.registered_task(name)
        if task.adaptation is None:
            return task
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=task.adaptation.progress.total, unit="step",
                       desc=f"adapting to {name}", dynamic_ncols=True)
        try:
            while True:
                adaptation = task.adaptation
                assert adaptation is not None
                if bar is not None:
                    bar.update(adaptation.progress.done - bar.n)
                    bar.set_postfix_str(adaptation.status)
                if adaptation.finished:
                    return task
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"the adaptation to task {name} is still "
                                      f"{adaptation.status} after {timeout:g} s", task)
                pause = poll if deadline is None else max(0.0, min(poll,
                                                                   deadline - time.monotonic()))
                self._sleep(pause)
                task = self.registered_task(name)
        finally:
            if bar is not None:
                bar.close()

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
                      idempotency_key: str | None = None,
                      rungs: Sequence[int] | None = None, eta: int | None = None,
                      short_training: int | bool | None = None) -> Job:
        """Queues a search job (``POST /v1/search-jobs``): ``candidates`` architectures from
        ``space``, within ``max_parameters``/``max_flops`` (MACs per sample), stopping after
        ``seconds`` if given. With ``rungs`` (validation images, increasing, the last the
        service's full budget), every candidate is scored on the first rung and the best
        ``1/eta`` of each rung on the next (multi-fidelity scoring, ``docs/api.md``).
        ``short_training`` ranks candidates (those of the last rung, with ``rungs``) by their
        accuracy after that many SGD steps from their default initialisation (``True``: the
        service's default, 8) instead of by the GHN's score: slower, and far better on
        families the GHN was not trained on (``Job.ranking`` quotes its Kendall tau).

        An ``Idempotency-Key`` is always sent (``idempotency_key``, else a random one for this
        call), so a retried request cannot queue the job twice; passing your own key makes a
        re-run of the same script return the job it created the first time.
        """
        constraints = {k: v for k, v in (("max_parameters", max_parameters),
                                         ("max_flops", max_flops)) if v is not None}
        budget: dict[str, Any] = {"candidates": candidates}
        if seconds is not None:
            budget["seconds"] = seconds
        body: dict[str, Any] = {"space": space, "task": task, "strategy": strategy,
                                "seed": seed, "budget": budget, "constraints": constraints}
        if rungs is not None:
            body["fidelity"] = {"rungs": list(rungs)}
            if eta is not None:
                body["fidelity"]["eta"] = eta
        if short_training not in (None, False):
            body["ranking"] = {"method": "short-training"}
            if short_training is not True:
                body["ranking"]["steps"] = short_training
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
        of the budget and shows the best score so far (marked "est. trained acc." when it
        is the ranking head's estimate). Raises :class:`WaitTimeout` (with the
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
                    estimate = best is not None and best.estimated_trained_accuracy is not None
                    bar.set_postfix_str(current.status + (
                        f", best {'est. trained acc. ' if estimate else ''}{best.score:.4f}"
                        if best and best.score is not None else ""))
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
