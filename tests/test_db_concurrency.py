"""Concurrent workers and clients: no job claimed twice, no duplicate rows from concurrent
replays, and no "database is locked" on SQLite. Each test body runs on SQLite and PostgreSQL.

Nothing here asserts on time; the durations only bound how long the threads keep going.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from nas_service.db import (
    JobStatus,
    catalog,
    listings,
    make_engine,
    queue,
    read_session,
    write_session,
)


def _run_threads(n: int, target: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``target(i)`` in ``n`` threads started together; return results and errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def _create_jobs(engine: Engine, n: int, budget: int = 10) -> list[str]:
    with write_session(engine) as session:
        return [queue.create_job(session, space="cells", task="mnist", strategy="random", seed=i,
                                 budget_candidates=budget)[0].id for i in range(n)]


def _claim_all(engine: Engine, worker: str) -> list[str]:
    claimed = []
    while (job := queue.claim_next_job(engine, worker, 60.0)) is not None:
        claimed.append(job.job_id)
    return claimed


def test_concurrent_claimers_take_each_job_exactly_once(engine: Engine) -> None:
    ids = _create_jobs(engine, 40)

    results, errors = _run_threads(8, lambda i: _claim_all(engine, f"worker-{i}"))

    assert errors == []
    claimed = [job_id for per_worker in results for job_id in per_worker]
    assert sorted(claimed) == sorted(ids)
    with read_session(engine) as session:
        assert listings.job_counts(session)[JobStatus.RUNNING] == 40
        assert all(j.attempts == 1 for j in listings.list_jobs(session, limit=100).items)


def _claim_in_child(url: str, worker: str, out: str) -> None:
    engine = make_engine(url)
    try:
        Path(out).write_text("\n".join(_claim_all(engine, worker)))
    finally:
        engine.dispose()


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_worker_processes_take_each_job_exactly_once(engine: Engine, database_url: str,
                                                     tmp_path: Path) -> None:
    ids = _create_jobs(engine, 24)
    engine.dispose()  # forked children must not share the parent's pooled connections
    context = multiprocessing.get_context("fork")
    outputs = [tmp_path / f"claims-{i}.txt" for i in range(3)]
    processes = [context.Process(target=_claim_in_child, args=(database_url, f"proc-{i}", str(out)))
                 for i, out in enumerate(outputs)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)

    assert [p.exitcode for p in processes] == [0, 0, 0]
    claimed = [line for out in outputs for line in out.read_text().split("\n") if line]
    assert sorted(claimed) == sorted(ids)


def test_concurrent_replays_of_one_idempotency_key_create_one_job(engine: Engine) -> None:
    def submit(_: int) -> tuple[str, bool]:
        with write_session(engine) as session:
            job, created = queue.create_job(
                session, space="cells", task="mnist", strategy="random", seed=3,
                budget_candidates=4, idempotency_key="retry-storm", request_hash="f" * 64)
            return job.id, created

    results, errors = _run_threads(6, submit)

    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_concurrent_saves_of_one_architecture_store_one_row(engine: Engine) -> None:
    def save(i: int) -> tuple[str, bool]:
        with write_session(engine) as session:
            arch, created = catalog.save_architecture(
                session, content_hash="d" * 64, task="mnist", ghn_version="ghn-1", graph="{}",
                num_parameters=i, flops=i)
            return arch.id, created

    results, errors = _run_threads(6, save)

    assert errors == []
    assert len({arch_id for arch_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_readers_never_fail_while_a_worker_writes(engine: Engine) -> None:
    """One worker records candidates and heartbeats as fast as it can while four clients read:
    every read and write succeeds (on SQLite: no "database is locked")."""
    (job_id,) = _create_jobs(engine, 1, budget=1_000_000)
    claimed = queue.claim_next_job(engine, "writer", 60.0)
    assert claimed is not None
    stop = threading.Event()
    reads = [0] * 4
    written = [0]

    def write(_: int) -> None:
        index = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            queue.record_candidate(engine, job_id, claimed.lease_token, index, status="scored",
                                   score=(index * 7919 % 1000) / 1000)
            index += 1
            if index % 10 == 0:
                assert queue.heartbeat(engine, job_id, claimed.lease_token, 60.0)
        written[0] = index
        stop.set()

    def read(i: int) -> None:
        while not stop.is_set():
            with read_session(engine) as session:
                page = listings.list_candidates(session, job_id, order_by="score", limit=20)
                scores = [c.score for c in page.items]
                assert scores == sorted(scores, reverse=True)
                assert listings.get_job(session, job_id) is not None
                listings.list_jobs(session, limit=5)
            reads[i - 1] += 1

    results, errors = _run_threads(5, lambda i: write(i) if i == 0 else read(i))
    stop.set()

    assert errors == []
    assert written[0] > 0 and all(reads)
    with read_session(engine) as session:
        job = listings.get_job(session, job_id)
        assert job is not None and job.progress_done == written[0]
