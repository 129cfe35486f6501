"""``/v1/architectures``: score one architecture, read it back, download its weights."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from nas_service.data import DatasetError, TaskSpec
from nas_service.db import Architecture, catalog, read_session
from nas_service.ghn import UnsupportedArchitectureError
from nas_service.graph import ArchitectureGraph, GraphLimits, GraphValidationError
from nas_service.scoring import ScoringTooCostly, TaskNotSupported, is_memory_failure
from nas_service.scoring.task_fit import task_mismatches
from nas_service.search import score_and_store
from nas_service.search.evaluation import find_stored_architecture
from nas_service.spaces import SearchSpaceError, get_space

from ..deps import ReadSessionDep, ServiceDep, ServiceState
from ..errors import (
    Problem,
    field_error,
    graph_problems,
    not_found,
    problem_responses,
    require_id,
)
from ..openapi import links
from ..schemas import ArchitectureRequest, ArchitectureResponse
from ..scoring_processes import ScoringBusy, ScoringPool, ScoringUnavailable, scored
from ..views import architecture_url, architecture_view
from .downloads import ETAG, checkpoint_response

router = APIRouter(prefix="/architectures", tags=["architectures"])

BUSY_RETRY_SECONDS = 5
"""``Retry-After`` of a miss refused because ``NAS_SCORING_QUEUE`` architectures wait."""
UNAVAILABLE_RETRY_SECONDS = 10
"""``Retry-After`` of a miss no scoring process could score (one died or is starting again)."""
MAX_REPORTED_PROBLEMS = 100


def _build_graph(body: ArchitectureRequest, spec: TaskSpec,
                 limits: GraphLimits) -> ArchitectureGraph:
    """The validated graph of the request, checked against the task; 422 problems otherwise."""
    if body.graph is None:
        assert body.space is not None and body.seed is not None
        try:
            return get_space(body.space).sample(body.seed, spec.input_shape, spec.num_classes,
                                                limits=limits)
        except SearchSpaceError as e:
            raise Problem(422, str(e), slug="invalid-request", title="Invalid request",
                          errors=[field_error("/body/space", str(e), field="space")]) from None
    try:
        graph = ArchitectureGraph.from_dict(body.graph, limits)
    except GraphValidationError as e:
        problems = e.problems
        raise Problem(422, f"{len(problems)} problem(s) in the graph", slug="invalid-graph",
                      title="Invalid architecture graph",
                      errors=graph_problems(problems[:MAX_REPORTED_PROBLEMS], "/body/graph")
                      ) from None
    if graph.opaque_nodes:
        index = {n.id: i for i, n in enumerate(graph.nodes)}
        raise Problem(422, f"the graph has {len(graph.opaque_nodes)} opaque node(s): the service "
                      "cannot run them, so it cannot score the graph", slug="opaque-graph",
                      title="The graph has opaque nodes",
                      errors=[field_error(f"/body/graph/nodes/{index[n.id]}/op",
                                          f"opaque node ({n.attrs.label or 'no label'})",  # type: ignore[attr-defined]
                                          node=n.id, field="op")
                              for n in graph.opaque_nodes[:MAX_REPORTED_PROBLEMS]])
    mismatches = task_mismatches(graph, spec)
    if mismatches:
        index = {n.id: i for i, n in enumerate(graph.nodes)}
        raise Problem(422, f"the graph does not fit task {spec.name!r}", slug="task-mismatch",
                      title="Graph does not fit the task",
                      errors=[field_error(f"/body/graph/nodes/{index[m.node]}/{m.field}",
                                          m.message, node=m.node, field=m.field)
                              for m in mismatches])
    return graph


def _cached(service: ServiceState, graph: ArchitectureGraph,
            task: str) -> ArchitectureResponse | None:
    """The stored result of this graph and task by the loaded GHN, read in one transaction;
    after a change of GHN checkpoint, the graph is scored again rather than answered with the old
    GHN's score."""
    ghn_version = service.require_scorer().ghn_version
    with read_session(service.engine) as session:
        architecture = find_stored_architecture(session, graph, task, ghn_version)
        return _view(session, architecture) if architecture is not None else None


def _view(session: Session, architecture: Architecture) -> ArchitectureResponse:
    checkpoint = (catalog.get_checkpoint(session, architecture.checkpoint_id)
                  if architecture.checkpoint_id else None)
    return architecture_view(architecture, checkpoint)


def _score(service: ServiceState, graph: ArchitectureGraph, spec: TaskSpec,
           graph_seconds: float) -> tuple[ArchitectureResponse, bool]:
    """Scores a graph the cache did not hold in this process and stores it (one write
    transaction): the path without scoring processes (``NAS_SCORING_PROCESSES=0``)."""
    (evaluation,) = score_and_store(service.engine, service.require_scorer(), service.store,
                                    [graph], spec, extra_timings={"graph": graph_seconds})
    if evaluation.error is not None:
        raise _scoring_problem(evaluation.error)
    assert evaluation.architecture is not None
    if evaluation.seconds:
        service.metrics.ghn_seconds.observe(evaluation.seconds)
    return architecture_view(evaluation.architecture, evaluation.checkpoint), evaluation.created


async def _score_in_pool(service: ServiceState, pool: ScoringPool, graph: ArchitectureGraph,
                         spec: TaskSpec, graph_seconds: float) -> tuple[ArchitectureResponse, bool]:
    """Queues the graph for a scoring process (joining an identical one already queued) and
    reads the stored result back."""
    try:
        future, queued = pool.submit(graph, spec.name, {"graph": graph_seconds})
    except ScoringBusy as e:
        service.metrics.scoring_busy.inc(reason="busy")
        raise Problem(503, f"{e}; retry later", slug="busy",
                      headers={"Retry-After": str(BUSY_RETRY_SECONDS)}) from None
    except ScoringUnavailable as e:
        raise _unavailable(service, e) from None
    try:
        outcome = await scored(future)
    except asyncio.CancelledError:
        # Only the server cancels a request: its grace period for stopping ran out. The
        # client gets an answer it can retry, not a closed connection.
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if task is None or (uncancel is not None and uncancel() > 0):
            raise
        raise _unavailable(service, ScoringUnavailable("the service is shutting down")
                           ) from None
    except ScoringUnavailable as e:
        raise _unavailable(service, e) from None
    except Exception as e:  # noqa: BLE001 - this graph's failure, answered as a problem
        raise _scoring_problem(e) from None
    if outcome.seconds:
        service.metrics.ghn_seconds.observe(outcome.seconds)
    view = await run_in_threadpool(_read_view, service, outcome.architecture_id)
    return view, outcome.created and queued


def _read_view(service: ServiceState, architecture_id: str) -> ArchitectureResponse:
    with read_session(service.engine) as session:
        architecture = catalog.get_architecture(session, architecture_id)
        if architecture is None:  # deleted between the scoring and this read
            raise Problem(503, "the scored architecture is no longer stored; retry",
                          slug="scoring-unavailable", headers={"Retry-After": "1"})
        return _view(session, architecture)


def _unavailable(service: ServiceState, error: ScoringUnavailable) -> Problem:
    service.metrics.scoring_busy.inc(reason="unavailable")
    return Problem(503, f"the architecture could not be scored now: {error}; retry later",
                   slug="scoring-unavailable", title="Scoring unavailable",
                   headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)})


def _scoring_problem(error: Exception) -> Exception:
    """What the API answers for a graph whose scoring failed: a problem, or ``error`` itself
    when it is not the graph's fault."""
    if isinstance(error, UnsupportedArchitectureError):
        return Problem(422, str(error), slug="unsupported-architecture",
                       title="The hypernetwork cannot predict this architecture")
    if isinstance(error, ScoringTooCostly):
        return too_costly(error)
    if is_memory_failure(error):
        return Problem(422, "scoring this architecture ran out of memory: it needs more than "
                       "this server can give", slug="scoring-too-costly",
                       title="Scoring this architecture costs too much",
                       extra={"resource": "memory"})
    if isinstance(error, DatasetError):
        return Problem(503, f"the task's data is not available: {error}",
                       slug="task-data-unavailable")
    return error


def too_costly(error: ScoringTooCostly) -> Problem:
    """The 422 problem of a graph over the scoring budget: which resource, the estimate and
    the limit (``NAS_MAX_SCORING_BYTES`` or ``NAS_MAX_SCORING_MACS``)."""
    return Problem(422, str(error), slug="scoring-too-costly",
                   title="Scoring this architecture costs too much",
                   extra={"resource": error.resource, "estimate": error.estimate,
                          "limit": error.limit})


def _check_affordable(service: ServiceState, graph: ArchitectureGraph, spec: TaskSpec) -> None:
    try:
        service.require_scorer().check_affordable(graph, spec)
    except ScoringTooCostly as e:
        raise too_costly(e) from None
    except DatasetError as e:  # the estimate counts the task's images: they must load
        raise _task_data_unavailable(spec, e) from None


def _task_data_unavailable(spec: TaskSpec, error: DatasetError) -> Problem:
    return Problem(503, f"the data of task {spec.name!r} is not available: {error}",
                   slug="task-data-unavailable")


async def _score_in_thread(service: ServiceState, graph: ArchitectureGraph, spec: TaskSpec,
                           graph_seconds: float) -> tuple[ArchitectureResponse, bool]:
    if service.waiting_scores >= service.settings.scoring_queue:
        service.metrics.scoring_busy.inc(reason="busy")
        raise Problem(503, "too many architectures are waiting for the hypernetwork; retry later",
                      slug="busy", headers={"Retry-After": str(BUSY_RETRY_SECONDS)})
    service.waiting_scores += 1
    try:
        return await anyio.to_thread.run_sync(_score, service, graph, spec, graph_seconds,
                                              limiter=service.scoring_limiter)
    except DatasetError as e:
        raise _task_data_unavailable(spec, e) from None
    finally:
        service.waiting_scores -= 1


LOCATION = {"Location": {"description": "the architecture's URL", "schema": {"type": "string"}}}
_LINKS = links(GetArchitecture=("get_architecture", "architecture_id=$response.body#/id"),
               GetArchitectureCheckpoint=("get_architecture_checkpoint",
                                          "architecture_id=$response.body#/id"))


@router.post(
    "", status_code=201, response_model=ArchitectureResponse,
    summary="Score an architecture with GHN-predicted weights",
    responses={201: {"description": "scored now", "headers": LOCATION, "links": _LINKS},
               200: {"description": "already scored: the stored result",
                     "model": ArchitectureResponse, "headers": LOCATION, "links": _LINKS},
               **problem_responses(400, 413, 422, 503)})
async def create_architecture(body: ArchitectureRequest, response: Response,
                              service: ServiceDep) -> ArchitectureResponse:
    """Validates the graph (or samples ``space``/``seed``), predicts its parameters with the GHN,
    recalibrates batch norm and measures accuracy on the task's validation split. The same graph
    and task again, with the same GHN loaded, returns the stored result (200) without running
    the GHN."""
    scorer = service.require_scorer()
    try:
        spec = scorer.check_task(body.task)
    except TaskNotSupported as e:
        raise Problem(422, str(e), slug="task-not-supported", title="Task not supported",
                      errors=[field_error("/body/task", str(e), field="task")]) from None
    started = time.perf_counter()
    graph = await run_in_threadpool(_build_graph, body, spec, service.graph_limits)
    graph_seconds = time.perf_counter() - started

    cached = await run_in_threadpool(_cached, service, graph, spec.name)
    if cached is not None:
        service.metrics.architectures.inc(cached="true")
        response.status_code = 200
        response.headers["Location"] = architecture_url(cached.id)
        return cached

    await run_in_threadpool(_check_affordable, service, graph, spec)
    if service.scoring_pool is not None:
        view, created = await _score_in_pool(service, service.scoring_pool, graph, spec,
                                             graph_seconds)
    else:
        view, created = await _score_in_thread(service, graph, spec, graph_seconds)
    service.metrics.architectures.inc(cached="false")
    response.status_code = 201 if created else 200
    response.headers["Location"] = architecture_url(view.id)
    return view


@router.get("/{architecture_id}", response_model=ArchitectureResponse,
            responses={200: {"description": "the stored architecture", "links": _LINKS},
                       **problem_responses(404)})
def get_architecture(architecture_id: str, session: ReadSessionDep) -> ArchitectureResponse:
    architecture = catalog.get_architecture(session, require_id("architecture", architecture_id))
    if architecture is None:
        raise not_found("architecture", architecture_id)
    return _view(session, architecture)


@router.get(
    "/{architecture_id}/checkpoint", response_class=Response,
    responses={200: {"description": "safetensors file: the graph's state_dict, with the graph "
                                    "JSON and the scores in its metadata",
                     "content": {"application/octet-stream": {}}, "headers": ETAG},
               304: {"description": "If-None-Match matched the ETag", "headers": ETAG},
               404: {"description": "unknown id, or the file is missing"}})
def get_architecture_checkpoint(
    architecture_id: str, request: Request, session: ReadSessionDep, service: ServiceDep,
    if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
) -> Response:
    architecture = catalog.get_architecture(session, require_id("architecture", architecture_id))
    if architecture is None:
        raise not_found("architecture", architecture_id)
    return checkpoint_response(session, service, architecture, if_none_match,
                               filename=f"architecture-{architecture.id}.safetensors")
