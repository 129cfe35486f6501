"""Registered tasks and the lease protocol of their adaptation jobs.

Registering a task (:func:`create_task`) writes its row with a ``queued`` adaptation job. A
worker claims the oldest claimable one (:func:`claim_next_adaptation`: ``queued``, or ``running``
with an expired lease and attempts left), renews its lease and reports progress with
:func:`heartbeat_adaptation`, and ends with :func:`finish_adaptation` (or
:func:`release_adaptation` when it shuts down). Every write names the lease token and is refused
once the token no longer holds the job (the protocol of :mod:`nas_service.db.leases`, which
search jobs follow too); an adaptation whose lease expired ``max_attempts`` times becomes ``failed``. The worker
keeps its own training state on disk, so a reclaimed job resumes from it rather than starting
over.

Adaptations run one at a time, service-wide: a job is claimable only while no other holds a
live lease, since each starts from the GHN the previous one served.

Atomic: each function is one transaction; :func:`claim_next_adaptation` never hands one job to
two workers (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` and a compare-and-set ``UPDATE``; SQLite:
``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from nas_service.db.clock import db_now
from nas_service.db.engine import writer
from nas_service.db.errors import LeaseLost, StorageError
from nas_service.db.leases import (
    LEASE_CLEARED,
    claim_oldest,
    holds_lease,
    lease_expired,
    lease_release,
    lease_renewal,
)
from nas_service.db.models import JobStatus, RegisteredTask
from nas_service.db.storable import storable_text

DEFAULT_MAX_ATTEMPTS = 3


class TaskExists(StorageError):
    """A task of that name is registered already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a task named {name!r} is registered already")
        self.name = name


@dataclass(frozen=True)
class ClaimedAdaptation:
    """An adaptation job a worker now holds."""

    name: str
    lease_token: str
    worker_id: str
    attempt: int
    settings: dict[str, Any]
    progress_done: int


def create_task(session: Session, *, name: str, format: str, input_shape: Sequence[int],
                num_classes: int, class_names: Sequence[str], train_images: int,
                test_images: int, size_bytes: int, path: str, settings: dict[str, Any],
                progress_total: int) -> RegisteredTask:
    """Insert a registered task with a queued adaptation job, in the caller's transaction.

    Raises:
        TaskExists: the name is taken (also under a concurrent registration of the same name).
    """
    row = RegisteredTask(name=name, format=format, input_shape=list(input_shape),
                         num_classes=num_classes, class_names=list(class_names),
                         train_images=train_images, test_images=test_images,
                         size_bytes=size_bytes, path=path, settings=dict(settings),
                         progress_done=0, progress_total=progress_total,
                         status=JobStatus.QUEUED, attempts=0)
    if session.get(RegisteredTask, name) is not None:
        raise TaskExists(name)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise TaskExists(name) from None
    session.refresh(row)
    return row


def get_task(session: Session, name: str) -> RegisteredTask | None:
    return session.get(RegisteredTask, name)


def list_tasks(session: Session) -> list[RegisteredTask]:
    """Every registered task, oldest first."""
    return list(session.scalars(select(RegisteredTask)
                                .order_by(RegisteredTask.created_at, RegisteredTask.name)))


def adapted_tasks(session: Session) -> list[RegisteredTask]:
    """Registered tasks whose adaptation succeeded, in the order they were adapted."""
    return list(session.scalars(select(RegisteredTask)
                                .where(RegisteredTask.status == JobStatus.SUCCEEDED)
                                .order_by(RegisteredTask.finished_at, RegisteredTask.name)))


def _holds_lease(name: str, token: str) -> ColumnElement[bool]:
    return holds_lease(RegisteredTask.name, name, token)


def claim_next_adaptation(engine: Engine, worker_id: str, lease_seconds: float, *,
                          max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> ClaimedAdaptation | None:
    """Claim the oldest claimable adaptation job; ``None`` when there is none. Jobs whose lease
    expired with no attempts left become ``failed`` first."""
    # One adaptation at a time, service-wide: each starts from the GHN the last one served.
    other = aliased(RegisteredTask)
    busy = (select(other.name)
            .where(other.status == JobStatus.RUNNING, other.lease_expires_at >= db_now())
            .exists())
    claimable = and_(RegisteredTask.attempts < max_attempts,
                     or_(RegisteredTask.status == JobStatus.QUEUED,
                         lease_expired(RegisteredTask)), ~busy)
    with writer(engine).begin() as conn:
        _settle_abandoned(conn, max_attempts)
        claim = claim_oldest(conn, RegisteredTask.name, claimable, worker_id, lease_seconds,
                             (RegisteredTask.attempts, RegisteredTask.settings,
                              RegisteredTask.progress_done))
    if claim is None:
        return None
    return ClaimedAdaptation(claim.chosen.key, claim.token, worker_id, claim.claimed.attempts,
                             dict(claim.claimed.settings or {}), claim.claimed.progress_done)


def _settle_abandoned(conn: Connection, max_attempts: int) -> None:
    abandoned = and_(lease_expired(RegisteredTask), RegisteredTask.attempts >= max_attempts)
    conn.execute(
        update(RegisteredTask).where(abandoned)
        .values(status=JobStatus.FAILED, finished_at=db_now(), **LEASE_CLEARED,
                error=f"gave up after {max_attempts} attempt(s): the worker's lease expired "
                      "before the adaptation finished"))


def heartbeat_adaptation(engine: Engine, name: str, token: str, lease_seconds: float,
                         progress_done: int | None = None) -> bool:
    """Renew the lease and record progress; false when the lease is lost."""
    values = lease_renewal(lease_seconds)
    if progress_done is not None:
        values["progress_done"] = progress_done
    with writer(engine).begin() as conn:
        renewed = conn.execute(update(RegisteredTask).where(_holds_lease(name, token))
                               .values(**values).returning(RegisteredTask.name)).first()
    return renewed is not None


def finish_adaptation(engine: Engine, name: str, token: str, status: JobStatus | str, *,
                      error: str | None = None, result: dict[str, Any] | None = None,
                      progress_done: int | None = None) -> datetime:
    """End an adaptation the caller holds; returns the finishing time (database clock).

    Raises:
        LeaseLost: ``token`` no longer holds the job; nothing changes.
    """
    status = JobStatus(status)
    if not status.is_final:
        raise ValueError(f"finish_adaptation takes a final status, not {status.value}")
    values: dict[str, Any] = {"status": status, "finished_at": db_now(), **LEASE_CLEARED,
                              "result": result,
                              "error": storable_text(error) if error is not None else None}
    if progress_done is not None:
        values["progress_done"] = progress_done
    with writer(engine).begin() as conn:
        finished = conn.execute(update(RegisteredTask).where(_holds_lease(name, token))
                                .values(**values).returning(RegisteredTask.finished_at)).first()
    if finished is None:
        raise LeaseLost(name)
    return finished.finished_at


def release_adaptation(engine: Engine, name: str, token: str) -> None:
    """Give the job back without counting the attempt (a clean shutdown); its saved training
    state stays, so the next claim resumes from it."""
    with writer(engine).begin() as conn:
        released = conn.execute(
            update(RegisteredTask).where(_holds_lease(name, token))
            .values(**lease_release(RegisteredTask))
            .returning(RegisteredTask.name)).first()
    if released is None:
        raise LeaseLost(name)
