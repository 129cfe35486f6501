"""``/v1/search-jobs``: queue a search, follow it, list its candidates, cancel it."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.exc import DataError

from nas_service.data import DatasetError, TaskSpec
from nas_service.db import (
    IdempotencyConflict,
    InvalidCursor,
    JobStatus,
    listings,
    queue,
    write_session,
)
from nas_service.scoring import TaskNotSupported
from nas_service.scoring.fidelity import FidelityError, FidelitySchedule
from nas_service.scoring.protocol import DEFAULT_SHORT_TRAINING_STEPS
from nas_service.spaces import SearchSpaceError, get_space

from ..deps import ReadSessionDep, ServiceDep
from ..errors import Problem, field_error, not_found, problem_responses, require_id
from ..openapi import links
from ..schemas import (
    CandidatePage,
    JobStatusName,
    SearchJobPage,
    SearchJobRequest,
    SearchJobResponse,
)
from ..views import best_candidates, candidate_views, job_url, job_view

router = APIRouter(prefix="/search-jobs", tags=["search jobs"])

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII: what a client can put in a header

Limit = Annotated[int, Query(ge=1, le=listings.MAX_PAGE_SIZE,
                             description="items per page (1 to 500)")]
Cursor = Annotated[str | None, Query(max_length=2048,
                                     description="next_cursor of the previous page")]


def _bad_cursor(e: InvalidCursor) -> Problem:
    return Problem(400, str(e), slug="invalid-cursor", title="Invalid cursor",
                   errors=[field_error("/query/cursor", str(e), field="cursor")])


def _next_url(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    params = {k: v for k, v in request.query_params.items() if k != "cursor"}
    params["cursor"] = cursor
    return f"{request.url.path}?{urlencode(params)}"


def _fidelity_schedule(config: dict[str, Any], full_images: int) -> dict[str, Any]:
    """The job's stored schedule (the bracket filled in); a 422 problem naming the rung, eta or
    bracket that cannot run on this service."""
    try:
        return FidelitySchedule.from_config(config, full_images).to_config()
    except FidelityError as e:
        location = f"/body/fidelity/{e.field}"
        if e.index is not None:
            location += f"/{e.index}"
        raise Problem(422, str(e), slug="invalid-request", title="Invalid request",
                      errors=[field_error(location, str(e), field=e.field)]) from None


def _ranking(body: SearchJobRequest, spec: TaskSpec) -> dict[str, Any] | None:
    """The job's stored ranking (steps filled in; ``None``: the GHN's score); a 422 problem for
    a short training on a character task."""
    if body.ranking is None or body.ranking.method == "ghn":
        return None
    if spec.is_language_model:
        message = (f"ranking by short-training needs an image classification task; "
                   f"{spec.name!r} is a character task")
        raise Problem(422, message, slug="invalid-request", title="Invalid request",
                      errors=[field_error("/body/ranking/method", message, field="method")])
    return {"method": body.ranking.method,
            "steps": body.ranking.steps or DEFAULT_SHORT_TRAINING_STEPS}


def _check_space_fits_task(space: str, task: str, input_shape: tuple[int, ...]) -> None:
    """A 422 problem when ``space`` cannot generate networks for the task's inputs (language
    models for an image task, image classifiers for a character task)."""
    check = getattr(get_space(space), "check_input", None)  # the name is already validated
    if check is None:
        return
    try:
        check(input_shape)
    except SearchSpaceError as e:
        message = f"space {space!r} cannot generate networks for task {task!r}: {e}"
        raise Problem(422, message, slug="invalid-request", title="Invalid request",
                      errors=[field_error("/body/space", message, field="space")]) from None


LOCATION = {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}
_JOB_LINKS = links(GetSearchJob=("get_search_job", "job_id=$response.body#/id"),
                   ListJobCandidates=("list_job_candidates", "job_id=$response.body#/id"),
                   CancelSearchJob=("cancel_search_job", "job_id=$response.body#/id"))


@router.post(
    "", status_code=202, response_model=SearchJobResponse,
    summary="Queue a search job",
    responses={202: {"description": "queued", "headers": LOCATION, "links": _JOB_LINKS},
               200: {"description": "an idempotent replay: the job the key created",
                     "model": SearchJobResponse, "headers": LOCATION, "links": _JOB_LINKS},
               **problem_responses(400, 409, 413, 422, 503)})
def create_search_job(
    body: SearchJobRequest, response: Response, service: ServiceDep,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
        description="replaying a request with the same key returns the same job")] = None,
) -> SearchJobResponse:
    """The job is queued (202, ``Location``: the job); a worker claims it and records candidates
    0..budget.candidates-1. With an ``Idempotency-Key``, a replay of the same body returns the
    same job (200); the same key with another body is a 409 problem."""
    scorer = service.require_scorer()
    try:
        spec = scorer.check_task(body.task)
    except TaskNotSupported as e:
        raise Problem(422, str(e), slug="task-not-supported", title="Task not supported",
                      errors=[field_error("/body/task", str(e), field="task")]) from None
    _check_space_fits_task(body.space, spec.name, spec.input_shape)
    fidelity = None
    if body.fidelity is not None:
        try:  # the full budget counts the task's validation images: they must load
            full_images = scorer.full_images(body.task)
        except DatasetError as e:
            raise Problem(503, f"the data of task {body.task!r} is not available: {e}",
                          slug="task-data-unavailable") from None
        fidelity = _fidelity_schedule(body.fidelity.model_dump(), full_images)
    ranking = _ranking(body, spec)
    limit = service.settings.max_search_candidates
    if body.budget.candidates > limit:
        message = f"at most {limit} candidates per job"
        raise Problem(422, message, slug="invalid-request", title="Invalid request",
                      errors=[field_error("/body/budget/candidates", message,
                                          field="candidates")])
    try:
        with write_session(service.engine) as session:
            job, created = queue.create_job(
                session, space=body.space, task=body.task, strategy=body.strategy,
                seed=body.seed, budget_candidates=body.budget.candidates,
                budget_seconds=body.budget.seconds,
                constraints=body.constraints.model_dump(exclude_none=True),
                fidelity=fidelity, ranking=ranking, idempotency_key=idempotency_key,
                request_hash=queue.fingerprint_request(body.model_dump(mode="json")))
            view = job_view(job, None)
    except IdempotencyConflict as e:
        raise Problem(409, str(e), slug="idempotency-conflict", title="Idempotency key reused",
                      extra={"job_id": e.job_id}) from None
    if created and service.worker is not None:
        service.worker.wake()
    response.status_code = 202 if created else 200
    response.headers["Location"] = job_url(view.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("", response_model=SearchJobPage, responses=problem_responses(400, 422))
def list_search_jobs(request: Request, session: ReadSessionDep,
                     status: Annotated[JobStatusName | None, Query()] = None,
                     limit: Limit = listings.DEFAULT_PAGE_SIZE,
                     cursor: Cursor = None) -> SearchJobPage:
    """Jobs, newest first, optionally of one status; page with ``next_cursor``."""
    try:
        page = listings.list_jobs(session, status=JobStatus(status) if status else None,
                                  limit=limit, cursor=cursor)
    except InvalidCursor as e:
        raise _bad_cursor(e) from None
    except DataError:  # a cursor whose key the database cannot compare (PostgreSQL and NUL)
        raise _bad_cursor(InvalidCursor("invalid cursor")) from None
    best = best_candidates(session, page.items)
    items = [job_view(job, best.get(job.best_candidate_id or "")) for job in page.items]
    return SearchJobPage(items=items, next_cursor=page.next_cursor,
                         next=_next_url(request, page.next_cursor))


@router.get("/{job_id}", response_model=SearchJobResponse,
            responses={200: {"description": "the job", "links": links(
                GetBestCandidate=("get_candidate",
                                  "candidate_id=$response.body#/best_candidate/id"),
                ListJobCandidates=("list_job_candidates", "job_id=$response.body#/id"))},
                **problem_responses(404)})
def get_search_job(job_id: str, session: ReadSessionDep) -> SearchJobResponse:
    """Status, progress, rate, best candidate so far, timings and error."""
    job = listings.get_job(session, require_id("search job", job_id))
    if job is None:
        raise not_found("search job", job_id)
    return job_view(job, best_candidates(session, [job]).get(job.best_candidate_id or ""))


@router.get("/{job_id}/candidates", response_model=CandidatePage,
            responses={200: {"description": "a page of candidates", "links": links(
                GetFirstCandidate=("get_candidate", "candidate_id=$response.body#/items/0/id"))},
                **problem_responses(400, 404, 422)})
def list_job_candidates(
    job_id: str, request: Request, session: ReadSessionDep,
    order_by: Annotated[listings.CandidateOrder, Query(
        description="score: best first, unscored last; index: in order")] = "score",
    limit: Limit = listings.DEFAULT_PAGE_SIZE, cursor: Cursor = None,
) -> CandidatePage:
    if listings.get_job(session, require_id("search job", job_id)) is None:
        raise not_found("search job", job_id)
    try:
        page = listings.list_candidates(session, job_id, order_by=order_by, limit=limit,
                                        cursor=cursor)
    except InvalidCursor as e:
        raise _bad_cursor(e) from None
    except DataError:
        raise _bad_cursor(InvalidCursor("invalid cursor")) from None
    return CandidatePage(items=candidate_views(session, page.items),
                         next_cursor=page.next_cursor, next=_next_url(request, page.next_cursor))


@router.post("/{job_id}/cancel", response_model=SearchJobResponse,
             responses={202: {"description": "cancel requested: the worker stops at its next "
                                             "heartbeat", "model": SearchJobResponse},
                        **problem_responses(404)})
def cancel_search_job(job_id: str, response: Response,
                      service: ServiceDep) -> SearchJobResponse:
    """A queued job is cancelled at once (200); a running one stops at its worker's next
    heartbeat (202, ``cancel_requested`` true); a finished job is returned unchanged (200)."""
    require_id("search job", job_id)
    with write_session(service.engine) as session:
        job = queue.request_cancel(session, job_id)
        if job is None:
            raise not_found("search job", job_id)
        view = job_view(job, best_candidates(session, [job]).get(job.best_candidate_id or ""))
    response.status_code = 202 if view.status == "running" else 200
    return view
