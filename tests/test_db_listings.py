"""Reading jobs, candidates and events: cursor pagination, event polling, and times. Each test body
runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, update

from nas_service.db import (
    InvalidCursor,
    JobStatus,
    SearchJob,
    listings,
    queue,
    read_session,
    write_session,
)


def _create_jobs(engine: Engine, n: int) -> list[str]:
    with write_session(engine) as session:
        return [queue.create_job(session, space="cells", task="mnist", strategy="evolution",
                                 seed=i, budget_candidates=30)[0].id for i in range(n)]


def _job_with_candidates(engine: Engine, scores: list[float | None]) -> str:
    (job_id,) = _create_jobs(engine, 1)
    claimed = queue.claim_next_job(engine, "w", 30.0)
    assert claimed is not None
    for index, score in enumerate(scores):
        queue.record_candidate(engine, job_id, claimed.lease_token, index,
                               status="scored" if score is not None else "rejected",
                               score=score, reason=None if score is not None else "too big")
    return job_id


def _all_pages(fetch: Any, limit: int) -> tuple[list[Any], int]:
    items, cursor, pages = [], None, 0
    while True:
        page = fetch(limit=limit, cursor=cursor)
        items.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


# ---- cursor pagination -------------------------------------------------------------------------

SCORES: list[float | None] = [0.5, None, 0.7, 0.5, 0.1, None, 0.7, 0.9, 0.5, 0.3, None, 0.0,
                              0.5, 0.25, 0.7, 0.6, None, 0.5, 0.2, 0.8, 0.5, 0.45, 0.5]


def test_candidates_by_score_page_through_everything_once_best_first(engine: Engine) -> None:
    job_id = _job_with_candidates(engine, SCORES)

    with read_session(engine) as session:
        items, pages = _all_pages(
            lambda **kw: listings.list_candidates(session, job_id, order_by="score", **kw), 4)

    assert pages == 6
    keys = [(c.score, c.index) for c in items]
    expected = sorted(((s, i) for i, s in enumerate(SCORES)),
                      key=lambda k: (k[0] is None, -(k[0] or 0), k[1]))
    assert keys == expected


@pytest.mark.parametrize("limit", [1, 5, 23, 100])
def test_candidates_by_index_page_through_everything_in_order(engine: Engine,
                                                              limit: int) -> None:
    job_id = _job_with_candidates(engine, SCORES)

    with read_session(engine) as session:
        items, pages = _all_pages(
            lambda **kw: listings.list_candidates(session, job_id, order_by="index", **kw), limit)

    assert [c.index for c in items] == list(range(len(SCORES)))
    assert pages == max(1, -(-len(SCORES) // limit))


def test_jobs_page_newest_first_and_filter_by_status(engine: Engine) -> None:
    ids = _create_jobs(engine, 7)
    # Jobs created in one transaction share a timestamp: the id breaks the tie. Spread some out
    # to cover both orderings.
    base = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with engine.begin() as conn:
        for k, job_id in enumerate(ids[:4]):
            conn.execute(update(SearchJob).where(SearchJob.id == job_id)
                         .values(created_at=base - timedelta(seconds=k)))
    claimed = queue.claim_next_job(engine, "w", 30.0)
    assert claimed is not None

    with read_session(engine) as session:
        everything, _ = _all_pages(lambda **kw: listings.list_jobs(session, **kw), 2)
        queued, _ = _all_pages(lambda **kw: listings.list_jobs(session, status="queued", **kw), 2)
        running = listings.list_jobs(session, status=JobStatus.RUNNING).items

    order = [(j.created_at, j.id) for j in everything]
    assert order == sorted(order, reverse=True)
    assert sorted(j.id for j in everything) == sorted(ids)
    assert [j.id for j in running] == [claimed.job_id]
    assert sorted(j.id for j in queued) == sorted(set(ids) - {claimed.job_id})
    assert everything[0].id == ids[0]  # the newest created_at


def test_a_cursor_survives_rows_added_between_pages(engine: Engine) -> None:
    (job_id,) = _create_jobs(engine, 1)
    claimed = queue.claim_next_job(engine, "w", 30.0)
    assert claimed is not None

    def record(index: int, score: float) -> None:
        queue.record_candidate(engine, job_id, claimed.lease_token, index, status="scored",
                               score=score)

    for index, score in enumerate([0.5, 0.4, 0.3, 0.2]):
        record(index, score)
    with read_session(engine) as session:
        first = listings.list_candidates(session, job_id, order_by="score", limit=2)
    record(4, 0.6)  # sorts before the cursor: not seen on later pages
    record(5, 0.25)  # sorts after it: seen
    with read_session(engine) as session:
        rest = listings.list_candidates(session, job_id, order_by="score", limit=10,
                                        cursor=first.next_cursor)

    assert [c.score for c in first.items] == [0.5, 0.4]
    assert [c.score for c in rest.items] == [0.3, 0.25, 0.2]
    assert rest.next_cursor is None


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


GARBAGE_CURSORS = [
    "", "!!!", "not base64 at all \u00e9", "e30", _b64([1, 2]), _b64({"l": "jobs"}),
    _b64({"l": "candidates:index", "k": ["one"]}), _b64({"l": "candidates:index", "k": [True]}),
    _b64({"l": "candidates:index", "k": [1, 2]}), _b64({"l": "candidates:index", "k": [10**30]}),
    _b64({"l": "candidates:score", "k": [0.5, 1]}),  # another listing's cursor
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
]


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
def test_garbage_cursors_are_refused(engine: Engine, cursor: str) -> None:
    job_id = _job_with_candidates(engine, [0.1])
    with read_session(engine) as session, pytest.raises(InvalidCursor):
        listings.list_candidates(session, job_id, order_by="index", cursor=cursor)


@pytest.mark.parametrize("cursor", [
    _b64({"l": "jobs", "k": ["yesterday", "abc"]}),
    _b64({"l": "jobs", "k": ["2030-01-01T00:00:00", "abc"]}),  # naive: not ours
    _b64({"l": "jobs", "k": [1, "abc"]}),
    _b64({"l": "candidates:score", "k": ["NaN", 1]}),
])
def test_garbage_job_and_score_cursors_are_refused(engine: Engine, cursor: str) -> None:
    job_id = _job_with_candidates(engine, [0.1])
    with read_session(engine) as session, pytest.raises(InvalidCursor):
        if '"jobs"' in base64.urlsafe_b64decode(cursor + "==").decode():
            listings.list_jobs(session, cursor=cursor)
        else:
            listings.list_candidates(session, job_id, order_by="score", cursor=cursor)


def test_page_sizes_are_bounded(engine: Engine) -> None:
    with read_session(engine) as session:
        for limit in (0, listings.MAX_PAGE_SIZE + 1):
            with pytest.raises(ValueError):
                listings.list_jobs(session, limit=limit)


# ---- events and time -----------------------------------------------------------------------------


def test_events_are_listed_in_order_and_can_be_polled(engine: Engine) -> None:
    (job_id,) = _create_jobs(engine, 1)
    with write_session(engine) as session:
        queue.add_event(session, job_id, "note", {"message": "hello"})
    claimed = queue.claim_next_job(engine, "w", 30.0)
    assert claimed is not None

    with read_session(engine) as session:
        events = listings.list_events(session, job_id)
        later = listings.list_events(session, job_id, after_id=events[1].id)
    assert [e.kind for e in events] == ["queued", "note", "claimed"]
    assert events[1].data == {"message": "hello"}
    assert events[2].data == {"worker": "w", "attempt": 1}
    assert [e.kind for e in later] == ["claimed"]
    assert all(e.at.tzinfo is timezone.utc for e in events)


def test_times_come_back_aware_utc_and_naive_times_are_refused(engine: Engine) -> None:
    (job_id,) = _create_jobs(engine, 1)
    with read_session(engine) as session:
        job = listings.get_job(session, job_id)
        assert job is not None
    assert job.created_at.tzinfo is timezone.utc
    assert abs(job.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5)

    eastern = timezone(timedelta(hours=-5))
    moment = datetime(2031, 6, 1, 7, 0, tzinfo=eastern)
    with engine.begin() as conn:
        conn.execute(update(SearchJob).where(SearchJob.id == job_id).values(finished_at=moment))
    with read_session(engine) as session:
        stored = listings.get_job(session, job_id)
        assert stored is not None
    assert stored.finished_at == moment
    assert stored.finished_at is not None and stored.finished_at.tzinfo is timezone.utc
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        conn.execute(update(SearchJob).where(SearchJob.id == job_id)
                     .values(finished_at=datetime(2031, 6, 1)))
