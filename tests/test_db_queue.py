"""The work-queue protocol (claim, lease, heartbeat, record, finish, cancel), run on SQLite and
PostgreSQL: each test body runs once per backend."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import pytest
from sqlalchemy import Engine, update

from nas_service.db import (
    CandidateStatus,
    IdempotencyConflict,
    JobStatus,
    LeaseLost,
    SearchJob,
    db_now,
    listings,
    queue,
    read_session,
    write_session,
)

LEASE = 30.0


def _create(engine: Engine, **overrides: Any) -> str:
    fields: dict[str, Any] = dict(space="cells", task="fashion-mnist", strategy="random", seed=7,
                                  budget_candidates=10, constraints={"max_parameters": 10_000})
    fields.update(overrides)
    with write_session(engine) as session:
        job, created = queue.create_job(session, **fields)
        assert created
        return job.id


def _job(engine: Engine, job_id: str) -> SearchJob:
    with read_session(engine) as session:
        job = listings.get_job(session, job_id)
        assert job is not None
        return job


def _expire_lease(engine: Engine, job_id: str) -> None:
    """Move the lease's expiry a minute into the past on the database clock (as if the worker
    had died a minute ago), rather than sleeping in the test."""
    with engine.begin() as conn:
        conn.execute(update(SearchJob).where(SearchJob.id == job_id)
                     .values(lease_expires_at=db_now(-60)))


def _events(engine: Engine, job_id: str) -> list[str]:
    with read_session(engine) as session:
        return [e.kind for e in listings.list_events(session, job_id)]


# ---- create_job and idempotency ----------------------------------------------------------------


def test_create_job_queues_a_job_with_its_parameters(engine: Engine) -> None:
    job_id = _create(engine, budget_seconds=120.0)

    job = _job(engine, job_id)
    assert job.status is JobStatus.QUEUED
    assert (job.space, job.task, job.seed, job.progress_done, job.progress_total) == (
        "cells", "fashion-mnist", 7, 0, 10)
    assert job.constraints == {"max_parameters": 10_000}
    assert job.budget_seconds == 120.0
    assert job.attempts == 0 and not job.cancel_requested and job.lease_token is None
    assert job.created_at.tzinfo is timezone.utc
    assert _events(engine, job_id) == ["queued"]


def test_replaying_an_idempotency_key_with_the_same_body_returns_the_same_job(
        engine: Engine) -> None:
    body = {"space": "cells", "task": "mnist", "budget": 5}
    digest = queue.fingerprint_request(body)
    assert digest == queue.fingerprint_request(dict(reversed(body.items())))
    kwargs: dict[str, Any] = dict(space="cells", task="mnist", strategy="random", seed=1,
                                  budget_candidates=5, idempotency_key="req-1",
                                  request_hash=digest)
    with write_session(engine) as session:
        first, created_first = queue.create_job(session, **kwargs)
    with write_session(engine) as session:
        again, created_again = queue.create_job(session, **kwargs)

    assert created_first and not created_again
    assert again.id == first.id
    with read_session(engine) as session:
        assert [j.id for j in listings.list_jobs(session).items] == [first.id]


def test_reusing_an_idempotency_key_for_a_different_body_is_a_conflict(engine: Engine) -> None:
    kwargs: dict[str, Any] = dict(space="cells", task="mnist", strategy="random", seed=1,
                                  budget_candidates=5, idempotency_key="req-2")
    with write_session(engine) as session:
        job, _ = queue.create_job(session, request_hash="a" * 64, **kwargs)

    with pytest.raises(IdempotencyConflict) as raised, write_session(engine) as session:
        queue.create_job(session, request_hash="b" * 64, **kwargs)
    assert raised.value.job_id == job.id
    with read_session(engine) as session:
        assert len(listings.list_jobs(session).items) == 1


@pytest.mark.parametrize("bad", [dict(budget_candidates=0), dict(budget_seconds=-1.0),
                                 dict(strategy="hill-climbing")])
def test_create_job_refuses_nonsense(engine: Engine, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _create(engine, **bad)


# ---- claim -------------------------------------------------------------------------------------


def test_claims_take_the_oldest_queued_job_first_and_each_job_once(engine: Engine) -> None:
    ids = [_create(engine, seed=i) for i in range(3)]

    claims = [queue.claim_next_job(engine, f"w{i}", LEASE) for i in range(4)]

    assert [c.job_id if c else None for c in claims] == [*ids, None]
    first = claims[0]
    assert first is not None
    assert first.attempt == 1 and first.seed == 0 and first.done_indices == frozenset()
    assert first.constraints == {"max_parameters": 10_000}
    assert first.lease_expires_at.tzinfo is timezone.utc
    job = _job(engine, first.job_id)
    assert job.status is JobStatus.RUNNING
    assert (job.lease_owner, job.lease_token, job.attempts) == ("w0", first.lease_token, 1)
    assert job.started_at is not None and job.lease_expires_at == first.lease_expires_at
    assert job.lease_expires_at > job.started_at
    assert _events(engine, first.job_id) == ["queued", "claimed"]


def test_a_running_job_with_a_live_lease_is_not_claimed_again(engine: Engine) -> None:
    _create(engine)
    assert queue.claim_next_job(engine, "a", LEASE) is not None
    assert queue.claim_next_job(engine, "b", LEASE) is None
    with read_session(engine) as session:
        assert listings.queue_depth(session) == 0
        assert listings.job_counts(session)[JobStatus.RUNNING] == 1


def test_an_expired_lease_is_reclaimed_with_a_new_token_and_the_old_one_is_refused(
        engine: Engine) -> None:
    job_id = _create(engine)
    old = queue.claim_next_job(engine, "dead-worker", LEASE)
    assert old is not None
    assert queue.record_candidate(engine, job_id, old.lease_token, 0, status="scored", score=0.5)
    _expire_lease(engine, job_id)

    new = queue.claim_next_job(engine, "rescuer", LEASE)

    assert new is not None and new.job_id == job_id
    assert new.attempt == 2 and new.lease_token != old.lease_token
    assert new.done_indices == frozenset({0})
    lost = queue.heartbeat(engine, job_id, old.lease_token, LEASE)
    assert not lost and lost.held is False
    with pytest.raises(LeaseLost):
        queue.record_candidate(engine, job_id, old.lease_token, 1, status="scored", score=0.9)
    with pytest.raises(LeaseLost):
        queue.finish_job(engine, job_id, old.lease_token, "succeeded")
    job = _job(engine, job_id)
    assert (job.status, job.lease_owner, job.progress_done) == (JobStatus.RUNNING, "rescuer", 1)
    assert "reclaimed" in _events(engine, job_id)


def test_a_short_real_lease_expires_on_the_database_clock(engine: Engine) -> None:
    import time

    job_id = _create(engine)
    assert queue.claim_next_job(engine, "a", 0.2) is not None
    time.sleep(0.5)
    again = queue.claim_next_job(engine, "b", LEASE)
    assert again is not None and again.job_id == job_id and again.attempt == 2


def test_a_job_whose_lease_expired_max_attempts_times_fails_with_a_reason(
        engine: Engine) -> None:
    job_id = _create(engine)
    for attempt in (1, 2):
        claimed = queue.claim_next_job(engine, f"w{attempt}", LEASE, max_attempts=2)
        assert claimed is not None and claimed.attempt == attempt
        _expire_lease(engine, job_id)

    assert queue.claim_next_job(engine, "w3", LEASE, max_attempts=2) is None

    job = _job(engine, job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "2 attempt(s)" in job.error and "w2" in job.error
    assert job.finished_at is not None and job.lease_token is None
    assert _events(engine, job_id)[-1] == "failed"


def test_release_returns_the_job_to_the_queue_without_spending_an_attempt(
        engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    queue.release_job(engine, job_id, claimed.lease_token)

    assert _job(engine, job_id).status is JobStatus.QUEUED
    again = queue.claim_next_job(engine, "b", LEASE)
    assert again is not None and again.job_id == job_id and again.attempt == 1
    with pytest.raises(LeaseLost):
        queue.release_job(engine, job_id, claimed.lease_token)


def test_a_crashed_job_is_abandoned_to_the_queue_with_its_attempt_counted(
        engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    queue.abandon_job(engine, job_id, claimed.lease_token, "OSError: the disk went away")

    job = _job(engine, job_id)
    assert (job.status, job.lease_token, job.attempts) == (JobStatus.QUEUED, None, 1)
    assert _events(engine, job_id)[-1] == "abandoned"
    with pytest.raises(LeaseLost):
        queue.abandon_job(engine, job_id, claimed.lease_token, "again")
    again = queue.claim_next_job(engine, "b", LEASE)
    assert again is not None and again.job_id == job_id and again.attempt == 2


# ---- heartbeat ---------------------------------------------------------------------------------


def test_a_busy_workers_heartbeat_requeues_a_dead_workers_expired_job(engine: Engine) -> None:
    dead_job, busy_job = _create(engine), _create(engine)
    dead = queue.claim_next_job(engine, "dead", LEASE)
    busy = queue.claim_next_job(engine, "busy", LEASE)
    assert dead is not None and busy is not None and dead.job_id == dead_job
    _expire_lease(engine, dead_job)

    assert queue.heartbeat(engine, busy_job, busy.lease_token, LEASE)

    # Nobody works on it: it says so at once, and the dead worker's token is void.
    job = _job(engine, dead_job)
    assert (job.status, job.lease_token, job.attempts) == (JobStatus.QUEUED, None, 1)
    assert _events(engine, dead_job)[-1] == "lease_expired"
    assert not queue.heartbeat(engine, dead_job, dead.lease_token, LEASE)
    rescued = queue.claim_next_job(engine, "rescuer", LEASE)
    assert rescued is not None and rescued.job_id == dead_job and rescued.attempt == 2
    assert _job(engine, busy_job).status is JobStatus.RUNNING


def test_a_heartbeat_fails_an_expired_job_out_of_attempts(engine: Engine) -> None:
    dead_job, busy_job = _create(engine), _create(engine)
    assert queue.claim_next_job(engine, "dead", LEASE, max_attempts=1) is not None
    busy = queue.claim_next_job(engine, "busy", LEASE, max_attempts=1)
    assert busy is not None
    _expire_lease(engine, dead_job)

    assert queue.heartbeat(engine, busy_job, busy.lease_token, LEASE, max_attempts=1)

    job = _job(engine, dead_job)
    assert job.status is JobStatus.FAILED and "1 attempt(s)" in (job.error or "")


def test_heartbeat_extends_the_lease_and_reports_a_cancel_request(engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", 5.0)
    assert claimed is not None

    beat = queue.heartbeat(engine, job_id, claimed.lease_token, 300.0)
    assert beat and beat.held and not beat.cancel_requested
    assert beat.lease_expires_at is not None and beat.lease_expires_at > claimed.lease_expires_at

    with write_session(engine) as session:
        job = queue.request_cancel(session, job_id)
        assert job is not None and job.cancel_requested and job.status is JobStatus.RUNNING
    beat = queue.heartbeat(engine, job_id, claimed.lease_token, 300.0)
    assert beat.held and beat.cancel_requested

    queue.finish_job(engine, job_id, claimed.lease_token, "cancelled")
    assert _job(engine, job_id).status is JobStatus.CANCELLED
    assert not queue.heartbeat(engine, job_id, claimed.lease_token, 300.0)


def test_heartbeat_with_a_wrong_token_changes_nothing(engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    before = _job(engine, job_id).lease_expires_at

    assert not queue.heartbeat(engine, job_id, "not-the-token", 3600.0)
    assert _job(engine, job_id).lease_expires_at == before


# ---- cancel ------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_cancels_it_at_once_and_it_is_never_claimed(
        engine: Engine) -> None:
    job_id = _create(engine)
    with write_session(engine) as session:
        job = queue.request_cancel(session, job_id)
        assert job is not None and job.status is JobStatus.CANCELLED
        assert job.finished_at is not None
        assert queue.request_cancel(session, "0" * 32) is None
    assert queue.claim_next_job(engine, "a", LEASE) is None


def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_reclaimed(engine: Engine) -> None:
    job_id = _create(engine)
    assert queue.claim_next_job(engine, "dead", LEASE) is not None
    with write_session(engine) as session:
        queue.request_cancel(session, job_id)
    _expire_lease(engine, job_id)

    assert queue.claim_next_job(engine, "b", LEASE) is None
    job = _job(engine, job_id)
    assert job.status is JobStatus.CANCELLED and job.error is None


def test_cancelling_a_finished_job_changes_nothing(engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    queue.finish_job(engine, job_id, claimed.lease_token, "succeeded")
    with write_session(engine) as session:
        job = queue.request_cancel(session, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and not job.cancel_requested


# ---- record_candidate and finish ---------------------------------------------------------------


def test_record_candidate_updates_progress_and_the_best_candidate(engine: Engine) -> None:
    job_id = _create(engine, budget_candidates=5)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    token = claimed.lease_token

    assert queue.record_candidate(engine, job_id, token, 0, status="scored", score=0.40,
                                  num_parameters=1000, flops=5000, seconds=0.1)
    assert queue.record_candidate(engine, job_id, token, 1, status="rejected",
                                  reason="over max_parameters", num_parameters=10**7)
    assert queue.record_candidate(engine, job_id, token, 2, status="scored", score=0.75)
    assert queue.record_candidate(engine, job_id, token, 3, status=CandidateStatus.FAILED,
                                  reason="RuntimeError: out of memory")
    assert queue.record_candidate(engine, job_id, token, 4, status="scored", score=0.75)

    job = _job(engine, job_id)
    assert job.progress_done == 5
    with read_session(engine) as session:
        by_index = {c.index: c for c in listings.list_candidates(session, job_id,
                                                                 order_by="index").items}
    # Ties go to the lower index.
    assert job.best_candidate_id == by_index[2].id
    assert by_index[1].reason == "over max_parameters" and by_index[1].score is None
    assert by_index[0].num_parameters == 1000 and by_index[0].seconds == 0.1

    queue.finish_job(engine, job_id, token, "succeeded")
    job = _job(engine, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.finished_at is not None
    assert job.lease_token is None and job.lease_expires_at is None
    assert _events(engine, job_id)[-1] == "succeeded"


def test_recording_the_same_index_again_changes_nothing(engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    assert queue.record_candidate(engine, job_id, claimed.lease_token, 3, status="scored",
                                  score=0.5)

    again = queue.record_candidate(engine, job_id, claimed.lease_token, 3, status="scored",
                                   score=0.99)

    assert again is False
    with read_session(engine) as session:
        (candidate,) = listings.list_candidates(session, job_id).items
    assert candidate.score == 0.5
    job = _job(engine, job_id)
    assert job.progress_done == 1 and job.best_candidate_id == candidate.id


def test_a_rerun_after_a_crash_stores_each_candidate_once(engine: Engine) -> None:
    job_id = _create(engine, budget_candidates=4)
    first = queue.claim_next_job(engine, "a", LEASE)
    assert first is not None
    for i in (0, 1):
        queue.record_candidate(engine, job_id, first.lease_token, i, status="scored",
                               score=i / 10)
    _expire_lease(engine, job_id)

    second = queue.claim_next_job(engine, "b", LEASE)
    assert second is not None and second.done_indices == {0, 1}
    # A careless worker redoes everything: the stored rows do not change.
    stored = [queue.record_candidate(engine, job_id, second.lease_token, i, status="scored",
                                     score=i / 10) for i in range(4)]
    assert stored == [False, False, True, True]
    assert _job(engine, job_id).progress_done == 4


@pytest.mark.parametrize("bad", [
    dict(index=0, status="scored", score=None),
    dict(index=0, status="scored", score=float("nan")),
    dict(index=0, status="scored", score=float("inf")),
    dict(index=0, status="rejected", score=0.3),
    dict(index=10, status="scored", score=0.3),
    dict(index=-1, status="scored", score=0.3),
    dict(index=0, status="lucky", score=0.3),
])
def test_record_candidate_refuses_impossible_candidates(engine: Engine,
                                                        bad: dict[str, Any]) -> None:
    job_id = _create(engine, budget_candidates=10)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    with pytest.raises(ValueError):
        queue.record_candidate(engine, job_id, claimed.lease_token, **bad)
    assert _job(engine, job_id).progress_done == 0


def test_finish_job_only_takes_a_final_status(engine: Engine) -> None:
    job_id = _create(engine)
    claimed = queue.claim_next_job(engine, "a", LEASE)
    assert claimed is not None
    with pytest.raises(ValueError):
        queue.finish_job(engine, job_id, claimed.lease_token, "queued")
    queue.finish_job(engine, job_id, claimed.lease_token, "failed", error="dataset missing")
    job = _job(engine, job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, "dataset missing")
    with pytest.raises(LeaseLost):
        queue.finish_job(engine, job_id, claimed.lease_token, "succeeded")


def test_read_session_refuses_to_write(engine: Engine) -> None:
    job_id = _create(engine)
    with pytest.raises(RuntimeError, match="read-only"), read_session(engine) as session:
        job = listings.get_job(session, job_id)
        assert job is not None
        job.error = "scribble"
        session.flush()
    assert _job(engine, job_id).error is None
