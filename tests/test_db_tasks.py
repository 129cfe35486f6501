"""Registered tasks and the lease protocol of their adaptation jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, update

from nas_service.db import (
    JobStatus,
    LeaseLost,
    RegisteredTask,
    db_now,
    read_session,
    tasks,
    write_session,
)

LEASE = 30.0


def _create(engine: Engine, name: str = "tiny", **overrides: Any) -> None:
    fields: dict[str, Any] = dict(
        name=name, format="npz", input_shape=[1, 12, 12], num_classes=3,
        class_names=["a", "b", "c"], train_images=75, test_images=15, size_bytes=12_000,
        path=f"/data/tasks/{name}", settings={"steps": 4, "beta": 0.01}, progress_total=4)
    fields.update(overrides)
    with write_session(engine) as session:
        tasks.create_task(session, **fields)


def _row(engine: Engine, name: str = "tiny") -> RegisteredTask:
    with read_session(engine) as session:
        row = tasks.get_task(session, name)
        assert row is not None
        return row


def test_a_name_is_registered_once(engine: Engine) -> None:
    _create(engine)
    with pytest.raises(tasks.TaskExists):
        _create(engine)
    row = _row(engine)
    assert (row.status, row.progress_done, row.input_shape) == (JobStatus.QUEUED, 0, [1, 12, 12])
    with read_session(engine) as session:
        assert [t.name for t in tasks.list_tasks(session)] == ["tiny"]


def test_claim_heartbeat_finish(engine: Engine) -> None:
    _create(engine)
    claimed = tasks.claim_next_adaptation(engine, "w1", LEASE)
    assert claimed is not None and claimed.attempt == 1 and claimed.settings["steps"] == 4
    assert tasks.claim_next_adaptation(engine, "w2", LEASE) is None  # held
    assert tasks.heartbeat_adaptation(engine, "tiny", claimed.lease_token, LEASE, 2)
    assert _row(engine).progress_done == 2
    assert not tasks.heartbeat_adaptation(engine, "tiny", "not-the-token", LEASE, 3)
    tasks.finish_adaptation(engine, "tiny", claimed.lease_token, "succeeded",
                            result={"loss": 1.0}, progress_done=4)
    row = _row(engine)
    assert (row.status, row.result, row.progress_done) == (JobStatus.SUCCEEDED, {"loss": 1.0}, 4)
    with pytest.raises(LeaseLost):
        tasks.finish_adaptation(engine, "tiny", claimed.lease_token, "failed")
    with read_session(engine) as session:
        assert [t.name for t in tasks.adapted_tasks(session)] == ["tiny"]


def _expire(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(RegisteredTask).values(lease_expires_at=db_now(-1)))


def test_an_expired_lease_is_reclaimed_then_given_up(engine: Engine) -> None:
    _create(engine)
    first = tasks.claim_next_adaptation(engine, "w1", LEASE, max_attempts=2)
    assert first is not None
    tasks.heartbeat_adaptation(engine, "tiny", first.lease_token, LEASE, 3)
    _expire(engine)
    second = tasks.claim_next_adaptation(engine, "w2", LEASE, max_attempts=2)
    assert second is not None and second.attempt == 2 and second.progress_done == 3
    assert not tasks.heartbeat_adaptation(engine, "tiny", first.lease_token, LEASE)
    _expire(engine)
    assert tasks.claim_next_adaptation(engine, "w3", LEASE, max_attempts=2) is None
    row = _row(engine)
    assert row.status == JobStatus.FAILED and "gave up after 2" in (row.error or "")


def test_release_keeps_the_attempt_count(engine: Engine) -> None:
    _create(engine)
    claimed = tasks.claim_next_adaptation(engine, "w1", LEASE)
    assert claimed is not None
    tasks.release_adaptation(engine, "tiny", claimed.lease_token)
    row = _row(engine)
    assert (row.status, row.attempts) == (JobStatus.QUEUED, 0)
    again = tasks.claim_next_adaptation(engine, "w2", LEASE)
    assert again is not None and again.attempt == 1


def test_one_adaptation_runs_at_a_time(engine: Engine) -> None:
    _create(engine, "first")
    _create(engine, "second")
    claimed = tasks.claim_next_adaptation(engine, "w1", LEASE)
    assert claimed is not None and claimed.name == "first"
    assert tasks.claim_next_adaptation(engine, "w2", LEASE) is None
    tasks.finish_adaptation(engine, "first", claimed.lease_token, "succeeded")
    second = tasks.claim_next_adaptation(engine, "w2", LEASE)
    assert second is not None and second.name == "second"
