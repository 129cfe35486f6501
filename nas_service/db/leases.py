"""The lease conditions and the claim that every leased row shares: search jobs
(:mod:`nas_service.db.queue`) and adaptation jobs (:mod:`nas_service.db.tasks`).

A leased table has the :class:`~nas_service.db.models.Leased` columns, a ``status``
(:class:`~nas_service.db.models.JobStatus`) and a primary key. A row is held by whoever has its
``lease_token`` while it is ``running``; its lease has expired when ``lease_expires_at`` is
before the database clock. :func:`claim_oldest` hands the oldest row matching a claimable
condition to one worker: ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent claimers each take a
different row; SQLite renders no ``FOR UPDATE``, and ``BEGIN IMMEDIATE`` serialises claims), then
a compare-and-set ``UPDATE`` that checks the condition again, so a row that changed since the
``SELECT`` is never claimed twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from nas_service.db.clock import db_now
from nas_service.db.models import JobStatus

CLAIM_TRIES = 3
"""Rows a claim may find changed under it before giving up for this call (PostgreSQL, only if
a row escaped SKIP LOCKED; callers poll again anyway)."""

LEASE_CLEARED: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}
"""The values that end a lease: no token holds the row any more."""


def running(model: Any) -> ColumnElement[bool]:
    return model.status == JobStatus.RUNNING


def lease_expired(model: Any) -> ColumnElement[bool]:
    """Running, with a lease that ended on the database clock (its worker died or stalled)."""
    return and_(running(model), model.lease_expires_at < db_now())


def holds_lease(key: InstrumentedAttribute[Any], value: Any, token: str) -> ColumnElement[bool]:
    """The row ``key == value`` is running under ``token``'s lease."""
    model = key.class_
    return and_(key == value, model.lease_token == token, running(model))


def lease_renewal(lease_seconds: float) -> dict[str, Any]:
    """The values of a heartbeat: the lease extended to ``now + lease_seconds``."""
    return {"lease_expires_at": db_now(lease_seconds), "heartbeat_at": db_now()}


def lease_release(model: Any) -> dict[str, Any]:
    """The values of a clean give-back: queued again, the attempt not counted."""
    return {"status": JobStatus.QUEUED, **LEASE_CLEARED, "attempts": model.attempts - 1}


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_oldest` took: the row as it was chosen (``key``, ``lease_owner``,
    ``attempts`` before the claim), the new token, and the ``returning`` columns after it."""

    chosen: Row[Any]
    token: str
    claimed: Row[Any]


def claim_oldest(conn: Connection, key: InstrumentedAttribute[Any],
                 claimable: ColumnElement[bool], worker_id: str, lease_seconds: float,
                 returning: Sequence[Any]) -> Claim | None:
    """Claim the oldest row (``created_at``, then ``key``) matching ``claimable`` for
    ``worker_id``, in the caller's transaction: ``running``, a fresh token, the lease until
    ``now + lease_seconds``, ``attempts + 1``, ``started_at`` set on the first claim. ``None``
    when no row is claimable (or every one tried changed under the claim)."""
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    model = key.class_
    for _ in range(CLAIM_TRIES):
        chosen = conn.execute(
            select(key.label("key"), model.lease_owner, model.attempts)
            .where(claimable)
            .order_by(model.created_at, key)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if chosen is None:
            return None
        token = secrets.token_hex(16)
        claimed = conn.execute(
            update(model)
            .where(key == chosen.key, claimable)
            .values(status=JobStatus.RUNNING, lease_owner=worker_id, lease_token=token,
                    attempts=model.attempts + 1,
                    started_at=func.coalesce(model.started_at, db_now()),
                    **lease_renewal(lease_seconds))
            .returning(*returning)
        ).first()
        if claimed is not None:
            return Claim(chosen, token, claimed)
    return None
