"""What the API and the dashboard read about search jobs: one job, the number of jobs per status,
and paged listings of jobs, of a job's candidates and of its events.

Paging
------
:func:`list_jobs` and :func:`list_candidates` return a :class:`Page` with a keyset cursor: the
last row's sort key (and the listing's name), URL-safe base64 of JSON, opaque to clients. The next
page starts strictly after that key, so rows inserted while a client pages appear or not
depending on where they sort, but no row is returned twice and no existing row is skipped. A
cursor from another listing or another order, or garbage, raises
:class:`~nas_service.db.errors.InvalidCursor` (the API answers 400). :func:`list_events` pages by
event id (``after_id``), which only grows. A page holds 1 to :data:`MAX_PAGE_SIZE` rows.

Every function reads only: the ``Session`` may come from
:func:`nas_service.db.engine.read_session`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from nas_service.db.errors import InvalidCursor
from nas_service.db.models import Candidate, JobEvent, JobStatus, SearchJob

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CandidateOrder = Literal["score", "index"]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: list[T]
    next_cursor: str | None


def get_job(session: Session, job_id: str) -> SearchJob | None:
    return session.get(SearchJob, job_id)


def queue_depth(session: Session) -> int:
    """How many jobs wait for a worker (status ``queued``)."""
    return session.scalar(select(func.count()).select_from(SearchJob)
                          .where(SearchJob.status == JobStatus.QUEUED)) or 0


def job_counts(session: Session) -> dict[JobStatus, int]:
    """The number of jobs in each status (every status present, zeros included)."""
    counts = dict.fromkeys(JobStatus, 0)
    for status, count in session.execute(
            select(SearchJob.status, func.count()).group_by(SearchJob.status)):
        counts[JobStatus(status)] = count
    return counts


def list_jobs(
    session: Session,
    *,
    status: JobStatus | str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page[SearchJob]:
    """Jobs, newest first (``created_at``, then ``id``, descending), optionally of one status.

    ``cursor`` is the ``next_cursor`` of the previous page.

    Raises:
        InvalidCursor: ``cursor`` was not produced by this listing.
        ValueError: ``limit`` is outside 1 .. :data:`MAX_PAGE_SIZE`, or ``status`` is not a
            job status.
    """
    _check_limit(limit)
    query = select(SearchJob)
    if status is not None:
        query = query.where(SearchJob.status == JobStatus(status))
    if cursor is not None:
        created_text, last_id = _decode_cursor(cursor, "jobs", ("str", "str"))
        try:
            created_at = datetime.fromisoformat(created_text)
            if created_at.tzinfo is None:
                raise InvalidCursor("invalid cursor")
            # In UTC, as stored: an offset that moves a date past year 1 or 9999 is refused here,
            # not by the driver.
            created_at = created_at.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise InvalidCursor("invalid cursor") from None
        query = query.where(or_(SearchJob.created_at < created_at,
                                and_(SearchJob.created_at == created_at,
                                     SearchJob.id < last_id)))
    rows = list(session.scalars(
        query.order_by(SearchJob.created_at.desc(), SearchJob.id.desc()).limit(limit + 1)))
    items, more = rows[:limit], len(rows) > limit
    next_cursor = (_encode_cursor("jobs", [items[-1].created_at.isoformat(), items[-1].id])
                   if more else None)
    return Page(items, next_cursor)


def list_candidates(
    session: Session,
    job_id: str,
    *,
    order_by: CandidateOrder = "score",
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page[Candidate]:
    """A job's candidates, by ``"score"`` (best first, unscored last, ties by index) or by
    ``"index"``. Cursors as in :func:`list_jobs`; a cursor from the other order is invalid.

    Raises:
        InvalidCursor: ``cursor`` was not produced by this listing in this order.
        ValueError: ``limit`` is outside 1 .. :data:`MAX_PAGE_SIZE`, or ``order_by`` is neither
            ``"score"`` nor ``"index"``.
    """
    _check_limit(limit)
    if order_by not in ("score", "index"):
        raise ValueError(f"order_by must be 'score' or 'index', got {order_by!r}")
    listing = f"candidates:{order_by}"
    query = select(Candidate).where(Candidate.job_id == job_id)
    if order_by == "index":
        if cursor is not None:
            (last_index,) = _decode_cursor(cursor, listing, ("int",))
            query = query.where(Candidate.index > last_index)
        query = query.order_by(Candidate.index)
    else:
        if cursor is not None:
            last_score, last_index = _decode_cursor(cursor, listing, ("score", "int"))
            if last_score is None:
                query = query.where(Candidate.score.is_(None), Candidate.index > last_index)
            else:
                query = query.where(or_(
                    Candidate.score < last_score,
                    and_(Candidate.score == last_score, Candidate.index > last_index),
                    Candidate.score.is_(None)))
        query = query.order_by(Candidate.score.desc().nulls_last(), Candidate.index)
    rows = list(session.scalars(query.limit(limit + 1)))
    items, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = items[-1]
        key: list[Any] = [last.index] if order_by == "index" else [last.score, last.index]
        next_cursor = _encode_cursor(listing, key)
    return Page(items, next_cursor)


def list_events(session: Session, job_id: str, *, after_id: int | None = None,
                limit: int = DEFAULT_PAGE_SIZE) -> list[JobEvent]:
    """A job's events in the order they happened, those after ``after_id`` (for polling).

    Raises:
        ValueError: ``limit`` is outside 1 .. :data:`MAX_PAGE_SIZE`.
    """
    _check_limit(limit)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        query = query.where(JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")


def _encode_cursor(listing: str, key: list[Any]) -> str:
    text = json.dumps({"l": listing, "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


MAX_CURSOR_TEXT = 64
"""Longest text part of a cursor key: the service writes ids (32 characters) and timestamps."""


def _decode_cursor(cursor: str, listing: str, kinds: tuple[str, ...]) -> list[Any]:
    """The sort key in ``cursor``, checked against the listing and the kinds of its parts:
    ``"int"`` (a candidate index: 0 to 2**31 - 1, the column's range), ``"str"`` (at most
    :data:`MAX_CURSOR_TEXT` characters that UTF-8 encodes, no NUL) or ``"score"`` (a finite
    number or null). Anything else, however it fails to decode, is :class:`InvalidCursor`: a
    cursor is client input, and no value of it reaches the database unless the column can hold
    it."""
    try:
        return _decode_key(cursor, listing, kinds)
    except InvalidCursor:
        raise
    except (ArithmeticError, ValueError, TypeError, AttributeError, UnicodeError,
            RecursionError, binascii.Error):
        raise InvalidCursor("invalid cursor") from None


def _decode_key(cursor: str, listing: str, kinds: tuple[str, ...]) -> list[Any]:
    raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("l") != listing:
        raise InvalidCursor("invalid cursor (not from this listing)")
    key = data.get("k")
    if not isinstance(key, list) or len(key) != len(kinds):
        raise InvalidCursor("invalid cursor")
    decoded: list[Any] = []
    for value, kind in zip(key, kinds, strict=True):
        # bool is an int to Python, never a valid key part.
        if isinstance(value, bool):
            raise InvalidCursor("invalid cursor")
        if (kind == "int" and isinstance(value, int) and 0 <= value < 2**31
                or kind == "str" and isinstance(value, str) and len(value) <= MAX_CURSOR_TEXT
                # PostgreSQL refuses NUL in text, and no driver sends a lone surrogate.
                and "\x00" not in value and value.encode("utf-8")):
            decoded.append(value)
        elif kind == "score" and value is None:
            decoded.append(None)
        elif kind == "score" and isinstance(value, (int, float)):
            score = float(value)  # OverflowError for integers past the float range
            if not math.isfinite(score):
                raise InvalidCursor("invalid cursor")
            decoded.append(score)
        else:
            raise InvalidCursor("invalid cursor")
    return decoded
