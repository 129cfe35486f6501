"""The work queue: the lease protocol by which the API queues search jobs and workers run them.

The protocol
------------
A client's search request becomes a ``queued`` row in ``search_jobs`` (:func:`create_job`). A
worker claims the oldest claimable job (:func:`claim_next_job`) and receives a *lease*: a random
token and an expiry time on the database clock. While it works it renews the lease
(:func:`heartbeat`) well before expiry, writes candidate *i* of the job with
:func:`record_candidate`, and ends with :func:`finish_job` (or gives the job back with
:func:`release_job` when it shuts down). Each of those writes names the token and is refused when
the token no longer matches: the lease is lost, the worker stops.

A worker that dies stops heartbeating; once its lease expires the job is claimable again (the
next claim or heartbeat of any worker puts it back to ``queued``, its attempt counted), by any
worker, which gets a new token (the old one is then refused everywhere) and redoes only the
candidates not yet recorded (:attr:`ClaimedJob.done_indices`). A job whose lease expired
``max_attempts`` times becomes ``failed``; a job whose worker died after a cancel request becomes
``cancelled``. Nothing stays ``running`` for ever.

Guarantees
----------
Atomic (one transaction each, all or nothing):

- :func:`claim_next_job`: at most one worker holds a job's lease at a time. Two concurrent
  claims never return the same job (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` then a
  conditional ``UPDATE``; SQLite: the whole claim inside ``BEGIN IMMEDIATE``, so claims run one
  after another).
- :func:`heartbeat`, :func:`record_candidate`, :func:`finish_job`, :func:`release_job`: the
  token check and the write happen in the same transaction (PostgreSQL locks the job row), so a
  worker whose lease was taken over writes nothing, not even one last row.
- :func:`record_candidate` inserts candidate *i* at most once (``INSERT ... ON CONFLICT (job_id,
  index) DO NOTHING``) and updates the job's ``progress_done`` and ``best_candidate_id`` in the
  same transaction, from the candidates table itself, so they are never out of step with it.
- :func:`promote_candidate` moves a scored candidate from rung *k - 1* to rung *k* at most once
  (the row is changed only while it is at rung *k - 1* with no rung-*k* entry), with the best
  candidate recomputed in the same transaction; only scores at the job's last rung (the full
  fidelity) compete for best.
- :func:`create_job` with an idempotency key creates at most one job per key, even under
  concurrent replays.

What may race, by design:

- Leases are checked at write time, not continuously: a worker stalled past its lease (a long GC
  pause) may compute a candidate that the next holder computes too. Only one of them is stored,
  and both are the same candidate, derived from ``(seed, index)``.
- A cancel request reaches a running job at its worker's next heartbeat; candidates recorded in
  between are kept.

Sessions and engines: the worker's functions form their own transaction and take the
``Engine``; :func:`create_job`, :func:`request_cancel` and :func:`add_event` write in the caller's
transaction and take a ``Session``, which must come from
:func:`nas_service.db.engine.write_session`. All times come from the database clock
(:class:`nas_service.db.clock.db_now`). Reading jobs, candidates and events is
:mod:`nas_service.db.listings`; the architectures and checkpoints that candidates point to are
:mod:`nas_service.db.catalog`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    false,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from nas_service.db._dialect import dialect_insert
from nas_service.db.clock import db_now
from nas_service.db.engine import writer
from nas_service.db.errors import IdempotencyConflict, LeaseLost
from nas_service.db.leases import (
    LEASE_CLEARED,
    claim_oldest,
    holds_lease,
    lease_expired,
    lease_release,
    lease_renewal,
    running,
)
from nas_service.db.models import (
    Candidate,
    CandidateStatus,
    JobEvent,
    JobStatus,
    SearchJob,
    SearchStrategy,
    new_id,
)
from nas_service.db.storable import storable_text

DEFAULT_MAX_ATTEMPTS = 3


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now holds, with everything it needs to run it."""

    job_id: str
    lease_token: str
    worker_id: str
    attempt: int  # 1 for the first claim, 2 after one expired lease, ...
    lease_expires_at: datetime
    space: str
    task: str
    strategy: SearchStrategy
    seed: int
    budget_candidates: int
    budget_seconds: float | None
    constraints: dict[str, Any]
    # Candidates recorded by earlier attempts: skip them, they are already stored.
    done_indices: frozenset[int]
    # The job's multi-fidelity schedule ({"rungs", "eta", "bracket"}); None: full scores only.
    fidelity: dict[str, Any] | None = None
    # What candidates are ranked by ({"method": "short-training", "steps"}); None: the GHN's score.
    ranking: dict[str, Any] | None = None


@dataclass(frozen=True)
class LeaseStatus:
    """The answer to a heartbeat. Truthy when the lease is still held, so ``if not
    heartbeat(...)`` reads as "the lease is lost"."""

    held: bool
    cancel_requested: bool
    lease_expires_at: datetime | None

    def __bool__(self) -> bool:
        return self.held


# ------------------------------------------------------------------------------------------------
# Events and lease conditions
# ------------------------------------------------------------------------------------------------


def _insert_event(conn: Connection, job_id: str, kind: str,
                  data: Mapping[str, Any] | None = None) -> None:
    conn.execute(dialect_insert(conn)(JobEvent).values(
        job_id=job_id, kind=kind, data=dict(data) if data is not None else None))


def _holds_lease(job_id: str, token: str) -> ColumnElement[bool]:
    return holds_lease(SearchJob.id, job_id, token)


# ------------------------------------------------------------------------------------------------
# Jobs: creation and cancellation (API side)
# ------------------------------------------------------------------------------------------------


def fingerprint_request(payload: Mapping[str, Any]) -> str:
    """The SHA-256 of a request body in canonical JSON: the ``request_hash`` stored with an
    idempotency key. Pass the validated body (``model.model_dump(mode="json")``), so that two
    spellings of the same request (key order, defaults) hash the same.

    Raises:
        ValueError: the body holds NaN or an infinity, which JSON cannot represent.
        TypeError: the body holds a value JSON cannot hold (a ``model_dump()`` without
            ``mode="json"``).
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def create_job(
    session: Session,
    *,
    space: str,
    task: str,
    strategy: SearchStrategy | str,
    seed: int,
    budget_candidates: int,
    budget_seconds: float | None = None,
    constraints: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    fidelity: Mapping[str, Any] | None = None,
    ranking: Mapping[str, Any] | None = None,
) -> tuple[SearchJob, bool]:
    """Queue a search job; return ``(job, created)``.

    With an ``idempotency_key``: the first request creates the job; a replay with the same key
    and the same ``request_hash`` (:func:`fingerprint_request`) returns that job with ``created``
    false; the same key with a different hash is a conflict. Safe under concurrent replays:
    exactly one of them creates the job.

    Raises:
        IdempotencyConflict: ``idempotency_key`` was already used with another ``request_hash``.
        ValueError: ``budget_candidates`` is below 1, ``budget_seconds`` is not positive, or
            ``strategy`` is not a search strategy.
    """
    if budget_candidates < 1:
        raise ValueError(f"budget_candidates must be at least 1, got {budget_candidates}")
    if budget_seconds is not None and not budget_seconds > 0:
        raise ValueError(f"budget_seconds must be positive, got {budget_seconds}")
    job_id = new_id()
    stmt = dialect_insert(session)(SearchJob).values(
        id=job_id, status=JobStatus.QUEUED, space=space, task=task,
        strategy=SearchStrategy(strategy), seed=seed, budget_candidates=budget_candidates,
        budget_seconds=budget_seconds, constraints=dict(constraints or {}),
        fidelity=dict(fidelity) if fidelity is not None else None,
        ranking=dict(ranking) if ranking is not None else None,
        idempotency_key=idempotency_key, request_hash=request_hash,
        progress_done=0, progress_total=budget_candidates, attempts=0, cancel_requested=False,
    )
    if idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[SearchJob.idempotency_key])
    created = session.execute(stmt.returning(SearchJob.id)).first() is not None
    if created:
        session.add(JobEvent(job_id=job_id, kind="queued"))
        session.flush()
        job = session.get(SearchJob, job_id)
        assert job is not None
        return job, True
    existing = session.scalars(
        select(SearchJob).where(SearchJob.idempotency_key == idempotency_key)).one()
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(idempotency_key or "", existing.id)
    return existing, False


def request_cancel(session: Session, job_id: str) -> SearchJob | None:
    """Ask for a job to stop; return it (``None``: no such job).

    A queued job is cancelled at once. A running job gets ``cancel_requested``: its worker sees it
    at the next heartbeat and finishes the job as ``cancelled`` (or, if the worker is dead, the
    next claim does). A finished job is returned unchanged.
    """
    cancelled_now = session.execute(
        update(SearchJob)
        .where(SearchJob.id == job_id, SearchJob.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=db_now())
        .returning(SearchJob.id)).first()
    flagged = None if cancelled_now else session.execute(
        update(SearchJob)
        .where(SearchJob.id == job_id, running(SearchJob), SearchJob.cancel_requested == false())
        .values(cancel_requested=True)
        .returning(SearchJob.id)).first()
    if cancelled_now:
        session.add(JobEvent(job_id=job_id, kind="cancelled", data={"while": "queued"}))
    elif flagged:
        session.add(JobEvent(job_id=job_id, kind="cancel_requested"))
    session.flush()
    return session.get(SearchJob, job_id, populate_existing=True)


def add_event(session: Session, job_id: str, kind: str,
              data: Mapping[str, Any] | None = None) -> JobEvent:
    """Append an event to a job's log (in the caller's transaction)."""
    event = JobEvent(job_id=job_id, kind=kind, data=dict(data) if data is not None else None)
    session.add(event)
    session.flush()
    return event


# ------------------------------------------------------------------------------------------------
# Jobs: the worker's side
# ------------------------------------------------------------------------------------------------


def claim_next_job(
    engine: Engine,
    worker_id: str,
    lease_seconds: float,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ClaimedJob | None:
    """Claim the oldest claimable job for ``worker_id``; ``None`` when there is none.

    Claimable: ``queued``, or ``running`` with a lease expired on the database clock, fewer than
    ``max_attempts`` claims so far and no cancel request. The claim sets the job ``running`` with a
    fresh token, ``lease_expires_at = now + lease_seconds`` and ``attempts + 1``. Before choosing,
    it settles abandoned jobs: expired and out of attempts → ``failed`` (the error says so);
    expired with a cancel request → ``cancelled``.

    Raises:
        ValueError: ``lease_seconds`` is not positive.
    """
    claimable = and_(
        SearchJob.attempts < max_attempts,
        or_(SearchJob.status == JobStatus.QUEUED,
            and_(lease_expired(SearchJob), SearchJob.cancel_requested == false())),
    )
    with writer(engine).begin() as conn:
        _settle_abandoned_jobs(conn, max_attempts)
        claim = claim_oldest(conn, SearchJob.id, claimable, worker_id, lease_seconds, (
            SearchJob.attempts, SearchJob.lease_expires_at, SearchJob.space, SearchJob.task,
            SearchJob.strategy, SearchJob.seed, SearchJob.budget_candidates,
            SearchJob.budget_seconds, SearchJob.constraints, SearchJob.fidelity,
            SearchJob.ranking))
        if claim is None:
            return None
        chosen, token, claimed = claim.chosen, claim.token, claim.claimed
        if chosen.attempts:
            _insert_event(conn, chosen.key, "reclaimed", {"worker": worker_id,
                                                           "attempt": claimed.attempts,
                                                           "previous_worker": chosen.lease_owner})
        else:
            _insert_event(conn, chosen.key, "claimed", {"worker": worker_id, "attempt": 1})
        done = conn.scalars(select(Candidate.index).where(Candidate.job_id == chosen.key)).all()
    return ClaimedJob(
        job_id=chosen.key, lease_token=token, worker_id=worker_id, attempt=claimed.attempts,
        lease_expires_at=claimed.lease_expires_at, space=claimed.space, task=claimed.task,
        strategy=claimed.strategy, seed=claimed.seed,
        budget_candidates=claimed.budget_candidates, budget_seconds=claimed.budget_seconds,
        constraints=dict(claimed.constraints or {}), done_indices=frozenset(done),
        fidelity=dict(claimed.fidelity) if claimed.fidelity is not None else None,
        ranking=dict(claimed.ranking) if claimed.ranking is not None else None,
    )


def _settle_abandoned_jobs(conn: Connection, max_attempts: int) -> None:
    """Expired leases settled: out of attempts → ``failed``, cancel requested → ``cancelled``,
    any other → ``queued`` again (:func:`_requeue_expired_jobs`)."""
    _fail_or_cancel_expired_jobs(conn, max_attempts)
    _requeue_expired_jobs(conn)


def _requeue_expired_jobs(conn: Connection) -> None:
    """Running jobs whose lease expired (their worker died or stalled) go back to ``queued``,
    their attempt counted: a job never reads ``running`` with nobody working on it while every
    worker is busy with another job, and the next free worker claims it in queue order. The
    old token is cleared, so the stalled worker's writes are refused as after a reclaim."""
    rows = conn.execute(
        select(SearchJob.id, SearchJob.lease_owner, SearchJob.attempts)
        .where(lease_expired(SearchJob), SearchJob.cancel_requested == false())
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        requeued = conn.execute(
            update(SearchJob)
            .where(SearchJob.id == row.id, lease_expired(SearchJob),
                   SearchJob.cancel_requested == false())
            .values(status=JobStatus.QUEUED, **LEASE_CLEARED)
            .returning(SearchJob.id)
        ).first()
        if requeued is not None:
            _insert_event(conn, row.id, "lease_expired",
                          {"worker": row.lease_owner, "attempts": row.attempts})


def _fail_or_cancel_expired_jobs(conn: Connection, max_attempts: int) -> None:
    """Expired leases that must not be claimed again: out of attempts, or cancelled."""
    abandoned = and_(lease_expired(SearchJob), or_(SearchJob.attempts >= max_attempts,
                                           SearchJob.cancel_requested == true()))
    rows = conn.execute(
        select(SearchJob.id, SearchJob.attempts, SearchJob.cancel_requested,
               SearchJob.lease_owner)
        .where(abandoned)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        if row.cancel_requested:
            status, error = JobStatus.CANCELLED, None
        else:
            status = JobStatus.FAILED
            error = (f"gave up after {row.attempts} attempt(s) (max_attempts={max_attempts}): "
                     f"the lease of worker {row.lease_owner!r} expired before the job finished")
        conn.execute(
            update(SearchJob)
            .where(SearchJob.id == row.id, abandoned)
            .values(status=status, error=error, finished_at=db_now(),
                    **LEASE_CLEARED))
        _insert_event(conn, row.id, status.value,
                      {"reason": "lease expired", "attempts": row.attempts, "error": error})


def heartbeat(engine: Engine, job_id: str, token: str, lease_seconds: float, *,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> LeaseStatus:
    """Renew the lease: ``lease_expires_at = now + lease_seconds`` if ``token`` still holds it.

    Returns a :class:`LeaseStatus`, false when the lease is lost (the worker must stop writing),
    with ``cancel_requested`` set when a client asked to cancel (the worker should finish the job
    as ``cancelled``). A lease that expired is still held until a claim or another worker's
    heartbeat settles it. In the same transaction, after renewing its own lease, the beat
    settles other jobs' expired leases (:func:`_settle_abandoned_jobs`): busy workers notice a
    dead worker's job within a heartbeat, not only when one of them is free to claim.

    Raises:
        ValueError: ``lease_seconds`` is not positive.
    """
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    with writer(engine).begin() as conn:
        renewed = conn.execute(
            update(SearchJob)
            .where(_holds_lease(job_id, token))
            .values(**lease_renewal(lease_seconds))
            .returning(SearchJob.cancel_requested, SearchJob.lease_expires_at)
        ).first()
        _settle_abandoned_jobs(conn, max_attempts)
        if renewed is not None:
            return LeaseStatus(True, bool(renewed.cancel_requested), renewed.lease_expires_at)
        cancel = conn.scalar(select(SearchJob.cancel_requested).where(SearchJob.id == job_id))
    return LeaseStatus(False, bool(cancel), None)


def record_candidate(
    engine: Engine,
    job_id: str,
    token: str,
    index: int,
    *,
    status: CandidateStatus | str,
    score: float | None = None,
    architecture_id: str | None = None,
    reason: str | None = None,
    num_parameters: int | None = None,
    flops: int | None = None,
    seconds: float | None = None,
    rung: int | None = None,
    eval_images: int | None = None,
    architecture_scores: Mapping[str, Any] | None = None,
) -> bool:
    """Store candidate ``index`` of a job; return whether this call stored it.

    Idempotent on ``(job_id, index)``: recording an index that is already stored (a rerun after a
    crash) changes nothing and returns ``False``. In the same transaction the job's
    ``progress_done`` becomes the number of stored candidates and ``best_candidate_id`` the scored
    candidate with the highest full-fidelity score (ties: the lowest index; see
    :func:`promote_candidate`).

    A scored candidate of a multi-fidelity job names its ``rung`` and the ``eval_images`` its
    score was taken on; it starts ``rung_scores`` with them (and ``architecture_scores``, extra
    fields of that rung's entry).

    A ``scored`` candidate needs a finite ``score``; ``rejected`` and ``failed`` ones have none
    (``reason`` says why).

    Raises:
        LeaseLost: ``token`` does not hold the job's lease; nothing is written.
        ValueError: ``status`` is not a candidate status, ``score`` does not fit ``status``, or
            ``index`` is outside ``0 .. budget_candidates - 1``; nothing is written.
    """
    status = CandidateStatus(status)
    if status is CandidateStatus.SCORED:
        if score is None or not math.isfinite(score):
            raise ValueError(f"a scored candidate needs a finite score, got {score!r}")
    elif score is not None:
        raise ValueError(f"a {status.value} candidate has no score, got {score!r}")
    with writer(engine).begin() as conn:
        # FOR UPDATE: a concurrent reclaim waits until this transaction ends, so the token
        # cannot change between the check and the write (SQLite: the database is locked).
        job = conn.execute(select(SearchJob.budget_candidates, SearchJob.fidelity)
                           .where(_holds_lease(job_id, token)).with_for_update()).first()
        if job is None:
            raise LeaseLost(job_id)
        budget = job.budget_candidates
        if not 0 <= index < budget:
            raise ValueError(f"candidate index {index} outside the job's budget 0..{budget - 1}")
        rung_scores = None
        if status is CandidateStatus.SCORED and rung is not None:
            rung_scores = [_rung_entry(rung, eval_images, score, architecture_id,
                                       architecture_scores)]
        inserted = conn.execute(
            dialect_insert(conn)(Candidate)
            .values(id=new_id(), job_id=job_id, index=index, status=status, score=score,
                    architecture_id=architecture_id,
                    reason=storable_text(reason) if reason is not None else None,
                    num_parameters=num_parameters, flops=flops, seconds=seconds,
                    rung=rung if status is CandidateStatus.SCORED else None,
                    eval_images=eval_images if status is CandidateStatus.SCORED else None,
                    rung_scores=rung_scores)
            .on_conflict_do_nothing(index_elements=[Candidate.job_id, Candidate.index])
            .returning(Candidate.id)
        ).first()
        if inserted is None:
            return False
        _update_progress(conn, job_id, job.fidelity)
    return True


def top_rung(fidelity: Mapping[str, Any] | None) -> int:
    """The last rung of a job's fidelity schedule: the full score."""
    return len(fidelity["rungs"]) - 1 if fidelity else 0


def _rung_entry(rung: int, images: int | None, score: float | None,
                architecture_id: str | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**(extra or {}), "rung": rung, "images": images, "score": score,
            "architecture_id": architecture_id}


def _update_progress(conn: Connection, job_id: str, fidelity: Mapping[str, Any] | None) -> None:
    """``progress_done`` and ``best_candidate_id`` from the candidates table. Only scores of
    the job's last rung (the full fidelity) compete for best: a cheap score is noisier, and a
    candidate that was not promoted was judged worse by it. Rows with no rung are full scores."""
    top = top_rung(fidelity)
    full = (Candidate.rung == top) if top else or_(Candidate.rung.is_(None), Candidate.rung == 0)
    best = (select(Candidate.id)
            .where(Candidate.job_id == job_id, Candidate.status == CandidateStatus.SCORED, full)
            .order_by(Candidate.score.desc(), Candidate.index)
            .limit(1).scalar_subquery())
    done = (select(func.count()).select_from(Candidate)
            .where(Candidate.job_id == job_id).scalar_subquery())
    conn.execute(update(SearchJob).where(SearchJob.id == job_id)
                 .values(progress_done=done, best_candidate_id=best))


def promote_candidate(
    engine: Engine,
    job_id: str,
    token: str,
    index: int,
    *,
    rung: int,
    eval_images: int,
    score: float | None,
    architecture_id: str | None = None,
    seconds: float = 0.0,
    error: str | None = None,
    architecture_scores: Mapping[str, Any] | None = None,
) -> bool:
    """Record candidate ``index``'s score at ``rung`` (its previous rung plus one); return
    whether this call changed it.

    The candidate's ``score``, ``rung``, ``eval_images`` and ``architecture_id`` become this
    rung's, its ``seconds`` grow by ``seconds``, and ``rung_scores`` gains the entry; with
    ``error`` (the rung's scoring failed) only ``rung_scores`` gains an entry naming it, and the
    candidate keeps its score. Idempotent: a candidate not at ``rung - 1`` (already promoted by
    an earlier attempt, or not scored) is left alone and ``False`` returned. The job's best
    candidate is recomputed in the same transaction.

    Raises:
        LeaseLost: ``token`` does not hold the job's lease; nothing is written.
        ValueError: neither a finite ``score`` nor an ``error``.
    """
    if error is None and (score is None or not math.isfinite(score)):
        raise ValueError(f"a promoted candidate needs a finite score, got {score!r}")
    with writer(engine).begin() as conn:
        job = conn.execute(select(SearchJob.fidelity)
                           .where(_holds_lease(job_id, token)).with_for_update()).first()
        if job is None:
            raise LeaseLost(job_id)
        row = conn.execute(select(Candidate.id, Candidate.rung, Candidate.rung_scores,
                                  Candidate.seconds)
                           .where(Candidate.job_id == job_id, Candidate.index == index,
                                  Candidate.status == CandidateStatus.SCORED)).first()
        if row is None or row.rung != rung - 1:
            return False
        entries = list(row.rung_scores or [])
        if any(e.get("rung") == rung for e in entries):
            return False  # this rung was tried and failed before
        if error is not None:
            entries.append({**_rung_entry(rung, eval_images, None, None, None),
                            "error": storable_text(error)})
            values: dict[str, Any] = {"rung_scores": entries}
        else:
            entries.append(_rung_entry(rung, eval_images, score, architecture_id,
                                       architecture_scores))
            values = {"rung_scores": entries, "rung": rung, "eval_images": eval_images,
                      "score": score, "architecture_id": architecture_id,
                      "seconds": (row.seconds or 0.0) + seconds}
        conn.execute(update(Candidate).where(Candidate.id == row.id).values(**values))
        _update_progress(conn, job_id, job.fidelity)
    return True


def finish_job(
    engine: Engine,
    job_id: str,
    token: str,
    status: JobStatus | str,
    error: str | None = None,
) -> None:
    """End a job the caller holds: ``succeeded``, ``failed`` (with ``error``) or ``cancelled``.

    Clears the lease.

    Raises:
        LeaseLost: ``token`` does not hold the job's lease; nothing changes.
        ValueError: ``status`` is not ``succeeded``, ``failed`` or ``cancelled``.
    """
    status = JobStatus(status)
    if not status.is_final:
        raise ValueError(f"finish_job takes succeeded, failed or cancelled, not {status.value}")
    error = storable_text(error) if error is not None else None
    with writer(engine).begin() as conn:
        finished = conn.execute(
            update(SearchJob)
            .where(_holds_lease(job_id, token))
            .values(status=status, error=error, finished_at=db_now(),
                    **LEASE_CLEARED)
            .returning(SearchJob.id)
        ).first()
        if finished is None:
            raise LeaseLost(job_id)
        _insert_event(conn, job_id, status.value, {"error": error} if error else None)


def release_job(engine: Engine, job_id: str, token: str) -> None:
    """Give a job back to the queue without counting the attempt (a worker shutting down
    cleanly): it becomes ``queued`` again and any worker can claim it at once, keeping the
    candidates already recorded.

    Raises:
        LeaseLost: ``token`` does not hold the job's lease; nothing changes.
    """
    with writer(engine).begin() as conn:
        released = conn.execute(
            update(SearchJob)
            .where(_holds_lease(job_id, token))
            .values(**lease_release(SearchJob))
            .returning(SearchJob.lease_owner)
        ).first()
        if released is None:
            raise LeaseLost(job_id)
        _insert_event(conn, job_id, "released", {"worker": released.lease_owner})


def abandon_job(engine: Engine, job_id: str, token: str, error: str) -> None:
    """Give up a job after an error its worker could not handle (the database went away, out
    of memory): back to ``queued`` at once, the attempt counted, ``error`` in a ``abandoned``
    event, so any worker retries it without waiting for the lease to expire. After
    ``max_attempts`` claims the job is failed instead (:meth:`finish_job`, by the worker).

    Raises:
        LeaseLost: ``token`` does not hold the job's lease; nothing changes.
    """
    error = storable_text(error)
    with writer(engine).begin() as conn:
        abandoned = conn.execute(
            update(SearchJob)
            .where(_holds_lease(job_id, token))
            .values(status=JobStatus.QUEUED, **LEASE_CLEARED)
            .returning(SearchJob.lease_owner, SearchJob.attempts)
        ).first()
        if abandoned is None:
            raise LeaseLost(job_id)
        _insert_event(conn, job_id, "abandoned", {"worker": abandoned.lease_owner,
                                                  "attempts": abandoned.attempts,
                                                  "error": error})
