"""Database rows as API responses: the one place a row's fields become JSON fields.

Reads never fail on stored data: the storage layer refuses what it could not give back
(:mod:`nas_service.db.storable`), and rows written before it did are served readable here, with
text that UTF-8 cannot encode (a lone surrogate) shown as U+FFFD and scores of an unknown shape
left out, rather than answered with a 500 on every read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from nas_service.db import Architecture, Candidate, Checkpoint, SearchJob
from nas_service.scoring.protocol import (
    BPC_NAME,
    DEFAULT_SHORT_TRAINING_STEPS,
    SHORT_TRAINING_KIND,
    short_training_description,
)

from .schemas import (
    ArchitectureResponse,
    Budget,
    CandidateResponse,
    CheckpointLink,
    Constraints,
    FidelityConfig,
    JobRanking,
    Progress,
    RungScore,
    Score,
    ScoreKind,
    SearchJobResponse,
)

API_PREFIX = "/v1"


def architecture_url(architecture_id: str) -> str:
    return f"{API_PREFIX}/architectures/{architecture_id}"


def job_url(job_id: str) -> str:
    return f"{API_PREFIX}/search-jobs/{job_id}"


def candidate_url(candidate_id: str) -> str:
    return f"{API_PREFIX}/candidates/{candidate_id}"


def readable(value: Any) -> Any:
    """``value`` (stored JSON or text) with every string UTF-8 can encode: lone surrogates
    become U+FFFD."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
        return value
    if isinstance(value, dict):
        return {readable(k): readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def _score(scores: Mapping[str, Any]) -> Score | None:
    if "value" not in scores:
        return None
    try:
        return Score(**readable(dict(scores)))
    except (ValidationError, TypeError):
        return None


def architecture_view(architecture: Architecture,
                      checkpoint: Checkpoint | None) -> ArchitectureResponse:
    scores = architecture.scores or {}
    score = _score(scores)
    link = None
    if architecture.checkpoint_id is not None:
        link = CheckpointLink(id=architecture.checkpoint_id,
                              url=architecture_url(architecture.id) + "/checkpoint",
                              size_bytes=checkpoint.size_bytes if checkpoint else None)
    return ArchitectureResponse(
        id=architecture.id, content_hash=architecture.content_hash, task=architecture.task,
        name=readable(architecture.name), num_parameters=architecture.num_parameters,
        flops=architecture.flops, score=score, ghn_version=architecture.ghn_version,
        timings={k: float(v) for k, v in (architecture.timings or {}).items()},
        checkpoint=link, created_at=architecture.created_at,
        graph=readable(json.loads(architecture.graph)))


def score_kind(candidate: Candidate, scores: Mapping[str, Any] | None) -> ScoreKind | None:
    """Which accuracy ``candidate.score`` is: its short training's, where the entry of its rung
    says so (a job ranked by short training); else, from its architecture's stored ``scores``,
    the ranking head's estimate when they hold one (searches rank by it then), else the
    accuracy with the predicted weights; for a character task, minus the bits per character
    with the predicted weights (searches maximise it: the best candidate has the lowest bpc)."""
    if candidate.score is None or not scores or "value" not in scores:
        return None
    if _rung_entry(candidate).get("score_kind") == SHORT_TRAINING_KIND:
        return SHORT_TRAINING_KIND
    if scores.get("name") == BPC_NAME:
        return "negative-predicted-bpc"
    return "estimated-trained-accuracy" if scores.get("ranking") else "predicted-accuracy"


def _rung_entry(candidate: Candidate) -> Mapping[str, Any]:
    """The entry of ``candidate.rung_scores`` of the rung its score was taken at."""
    rung = candidate.rung or 0
    for entry in candidate.rung_scores if isinstance(candidate.rung_scores, list) else []:
        if isinstance(entry, dict) and entry.get("rung") == rung:
            return entry
    return {}


def _rung_scores(entries: Any) -> list[RungScore]:
    out = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            out.append(RungScore(**readable({k: v for k, v in entry.items()
                                             if k in RungScore.model_fields})))
        except (ValidationError, TypeError, AttributeError):
            continue
    return out


def candidate_view(candidate: Candidate, scores: Mapping[str, Any] | None,
                   top_rung: int = 0) -> CandidateResponse:
    """``scores``: the stored scores of the candidate's architecture (:func:`architecture_scores`),
    ``None`` when it has none; ``top_rung``: the job's last rung (:func:`top_rungs`)."""
    has_architecture = candidate.architecture_id is not None
    predicted = scores.get("value") if scores else None
    bpc = scores is not None and scores.get("name") == BPC_NAME
    scored = candidate.score is not None
    rung = (candidate.rung if candidate.rung is not None else 0) if scored else None
    images = candidate.eval_images
    if scored and images is None and scores:
        images = scores.get("images")
    return CandidateResponse(
        rung=rung, eval_images=images if scored else None,
        full_fidelity=(rung == top_rung) if scored else None,
        rung_scores=_rung_scores(candidate.rung_scores),
        id=candidate.id, job_id=candidate.job_id, index=candidate.index,
        status=candidate.status.value, score=candidate.score,
        score_kind=score_kind(candidate, scores),
        predicted_accuracy=float(predicted) if predicted is not None and not bpc else None,
        predicted_bpc=float(predicted) if predicted is not None and bpc else None,
        reason=readable(candidate.reason),
        num_parameters=candidate.num_parameters, flops=candidate.flops,
        seconds=candidate.seconds, architecture_id=candidate.architecture_id,
        architecture_url=(architecture_url(candidate.architecture_id)
                          if candidate.architecture_id else None),
        checkpoint_url=candidate_url(candidate.id) + "/checkpoint" if has_architecture else None,
        created_at=candidate.created_at)


def architecture_scores(session: Session,
                        candidates: Iterable[Candidate]) -> dict[str, dict[str, Any]]:
    """The stored scores of the candidates' architectures, by architecture id, in one query."""
    ids = {c.architecture_id for c in candidates if c.architecture_id}
    if not ids:
        return {}
    rows = session.execute(select(Architecture.id, Architecture.scores)
                           .where(Architecture.id.in_(ids)))
    return {architecture_id: scores or {} for architecture_id, scores in rows}


def top_rungs(session: Session, job_ids: Iterable[str]) -> dict[str, int]:
    """The last rung of each job's fidelity schedule (0 without one), in one query."""
    ids = set(job_ids)
    if not ids:
        return {}
    rows = session.execute(select(SearchJob.id, SearchJob.fidelity).where(SearchJob.id.in_(ids)))
    return {job_id: _top_rung(fidelity) for job_id, fidelity in rows}


def _top_rung(fidelity: Any) -> int:
    rungs = fidelity.get("rungs") if isinstance(fidelity, dict) else None
    return len(rungs) - 1 if isinstance(rungs, list) and rungs else 0


def candidate_views(session: Session, candidates: Sequence[Candidate]) -> list[CandidateResponse]:
    """The responses of a page of candidates: one query for their architectures' scores, one
    for their jobs' rungs."""
    scores = architecture_scores(session, candidates)
    tops = top_rungs(session, {c.job_id for c in candidates})
    return [candidate_view(c, scores.get(c.architecture_id or ""), tops.get(c.job_id, 0))
            for c in candidates]


def best_candidates(session: Session,
                    jobs: Iterable[SearchJob]) -> dict[str, CandidateResponse]:
    """The best candidate of each job that has one, by candidate id, with its architecture's
    scores, in one query."""
    ids = [job.best_candidate_id for job in jobs if job.best_candidate_id]
    if not ids:
        return {}
    rows = session.execute(
        select(Candidate, Architecture.scores, SearchJob.fidelity)
        .outerjoin(Architecture, Architecture.id == Candidate.architecture_id)
        .join(SearchJob, SearchJob.id == Candidate.job_id)
        .where(Candidate.id.in_(ids)))
    return {c.id: candidate_view(c, scores, _top_rung(fidelity)) for c, scores, fidelity in rows}


def _fidelity(fidelity: Any) -> FidelityConfig | None:
    if not isinstance(fidelity, dict):
        return None
    try:
        return FidelityConfig(**fidelity)
    except (ValidationError, TypeError):
        return None


def _ranking(job: SearchJob) -> JobRanking:
    ranking = job.ranking if isinstance(job.ranking, dict) else None
    if ranking is None or ranking.get("method") != "short-training":
        return JobRanking(method="ghn")
    steps = ranking.get("steps")
    steps = steps if isinstance(steps, int) else DEFAULT_SHORT_TRAINING_STEPS
    return JobRanking(method="short-training", steps=steps,
                      **short_training_description(job.task, steps))


def job_view(job: SearchJob, best: CandidateResponse | None,
             now: datetime | None = None) -> SearchJobResponse:
    """``best``: the job's best candidate (from :func:`best_candidates`), if any."""
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
        fidelity=_fidelity(job.fidelity), ranking=_ranking(job),
        progress=Progress(done=job.progress_done, total=total,
                          fraction=job.progress_done / total if total else 0.0),
        rate=rate, best_candidate=best,
        timings={"queued_seconds": max(queued, 0.0), "running_seconds": running},
        error=readable(job.error), attempts=job.attempts, cancel_requested=job.cancel_requested,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        links=links)
