"""Database rows as API responses: the one place a row's fields become JSON fields."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas_service.db import Architecture, Candidate, Checkpoint, SearchJob

from .schemas import (
    ArchitectureResponse,
    Budget,
    CandidateResponse,
    CheckpointLink,
    Constraints,
    Progress,
    Score,
    SearchJobResponse,
)

API_PREFIX = "/v1"


def architecture_url(architecture_id: str) -> str:
    return f"{API_PREFIX}/architectures/{architecture_id}"


def job_url(job_id: str) -> str:
    return f"{API_PREFIX}/search-jobs/{job_id}"


def candidate_url(candidate_id: str) -> str:
    return f"{API_PREFIX}/candidates/{candidate_id}"


def architecture_view(architecture: Architecture,
                      checkpoint: Checkpoint | None) -> ArchitectureResponse:
    scores = architecture.scores or {}
    score = Score(**scores) if "value" in scores else None
    link = None
    if architecture.checkpoint_id is not None:
        link = CheckpointLink(id=architecture.checkpoint_id,
                              url=architecture_url(architecture.id) + "/checkpoint",
                              size_bytes=checkpoint.size_bytes if checkpoint else None)
    return ArchitectureResponse(
        id=architecture.id, content_hash=architecture.content_hash, task=architecture.task,
        name=architecture.name, num_parameters=architecture.num_parameters,
        flops=architecture.flops, score=score, ghn_version=architecture.ghn_version,
        timings={k: float(v) for k, v in (architecture.timings or {}).items()},
        checkpoint=link, created_at=architecture.created_at,
        graph=json.loads(architecture.graph))


def candidate_view(candidate: Candidate) -> CandidateResponse:
    has_architecture = candidate.architecture_id is not None
    return CandidateResponse(
        id=candidate.id, job_id=candidate.job_id, index=candidate.index,
        status=candidate.status.value, score=candidate.score, reason=candidate.reason,
        num_parameters=candidate.num_parameters, flops=candidate.flops,
        seconds=candidate.seconds, architecture_id=candidate.architecture_id,
        architecture_url=(architecture_url(candidate.architecture_id)
                          if candidate.architecture_id else None),
        checkpoint_url=candidate_url(candidate.id) + "/checkpoint" if has_architecture else None,
        created_at=candidate.created_at)


def best_candidates(session: Session, jobs: Iterable[SearchJob]) -> dict[str, Candidate]:
    """The best candidate of each job that has one, in one query."""
    ids = [job.best_candidate_id for job in jobs if job.best_candidate_id]
    if not ids:
        return {}
    return {c.id: c for c in session.scalars(select(Candidate).where(Candidate.id.in_(ids)))}


def job_view(job: SearchJob, best: Candidate | None,
             now: datetime | None = None) -> SearchJobResponse:
    now = now or datetime.now(timezone.utc)
    running = None
    if job.started_at is not None:
        running = max(((job.finished_at or now) - job.started_at).total_seconds(), 0.0)
    queued = ((job.started_at or job.finished_at or now) - job.created_at).total_seconds()
    rate = job.progress_done / running if running and job.progress_done else None
    total = job.progress_total or job.budget_candidates
    links = {"self": job_url(job.id), "candidates": job_url(job.id) + "/candidates",
             "cancel": job_url(job.id) + "/cancel"}
    return SearchJobResponse(
        id=job.id, status=job.status.value, space=job.space, task=job.task,
        strategy=job.strategy.value, seed=job.seed,
        budget=Budget(candidates=job.budget_candidates, seconds=job.budget_seconds),
        constraints=Constraints(**{k: v for k, v in (job.constraints or {}).items()
                                   if k in Constraints.model_fields}),
        progress=Progress(done=job.progress_done, total=total,
                          fraction=job.progress_done / total if total else 0.0),
        rate=rate, best_candidate=candidate_view(best) if best is not None else None,
        timings={"queued_seconds": max(queued, 0.0), "running_seconds": running},
        error=job.error, attempts=job.attempts, cancel_requested=job.cancel_requested,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        links=links)
