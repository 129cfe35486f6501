"""``serve``'s worker in a child process of its own (``NAS_WORKER_PROCESS``, the default): it
runs searches with the API's metrics counting them, and it is started again when it gets stuck
in scoring or is killed, while the API goes on answering. In an app on both databases."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import SMALL_FLOPS, requires_fashion_mnist, wait_until  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

JOB = {"space": "cells", "task": "fashion-mnist", "strategy": "random", "seed": 5,
       "budget": {"candidates": 4}, "constraints": {"max_flops": SMALL_FLOPS}}
WAIT_SECONDS = 180.0


def _finished(client: Any, job_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job = client.get(f"/v1/search-jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(final, f"job {job_id} to finish", WAIT_SECONDS)


def _candidates(client: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    return client.get(job["links"]["candidates"], params={"order_by": "index"}).json()["items"]


def _worker_metrics(client: Any) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines()
            if line.startswith(("nas_candidates_recorded", "nas_worker_"))]


def stuck_once_worker(config: Any, settings: Any, connection: Any, log_level: int) -> None:
    """A worker process's body whose first scored graph (the first ever, over every process
    with this data directory) never returns, as a kernel that spins forever; the rest score."""
    from nas_service.api.workers import serve_worker
    from nas_service.scoring import ArchitectureScorer

    marker = Path(settings.data_dir) / "stuck-once"
    marker.parent.mkdir(parents=True, exist_ok=True)
    original = ArchitectureScorer._evaluate

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return original(self, *args, **kwargs)
        time.sleep(3600)
        raise AssertionError("unreachable")

    ArchitectureScorer._evaluate = evaluate  # type: ignore[method-assign]
    serve_worker(config, settings, connection, log_level)


def releases_counted_worker(config: Any, settings: Any, connection: Any, log_level: int) -> None:
    """A worker process's body that appends a line to ``releases`` in its data directory each
    time it hands its freed memory back (then does so)."""
    from nas_service.api import workers

    marker = Path(settings.data_dir) / "releases"
    release = workers.release_freed_memory

    def counted() -> bool:
        with marker.open("a") as f:
            f.write("released\n")
        return release()

    workers.release_freed_memory = counted  # type: ignore[assignment]
    workers.serve_worker(config, settings, connection, log_level)


def test_the_worker_process_hands_back_its_memory_after_each_batch(make_client) -> None:
    from nas_service.api.app import build_worker

    client = make_client(worker_in_process=False, worker_process=True)
    service = client.app.state.service
    service.worker = build_worker(service, service.scorer, target=releases_counted_worker)
    service.worker.start()
    try:
        wait_until(lambda: service.worker.pid, "the worker process")
        job = _finished(client, client.post("/v1/search-jobs", json=JOB).json()["id"])
        assert job["status"] == "succeeded"
        batches = -(-JOB["budget"]["candidates"] // service.settings.ghn_batch_size)
        releases = (Path(service.settings.data_dir) / "releases").read_text().splitlines()
        assert len(releases) == batches, releases
    finally:
        service.worker.shut_down(5)


def test_the_worker_process_runs_a_search_and_the_api_counts_it(make_client) -> None:
    client = make_client(worker_in_process=True, worker_process=True)
    worker = client.app.state.service.worker
    wait_until(lambda: client.get("/readyz").status_code == 200, "the worker process")
    assert client.get("/readyz").json()["checks"]["worker"] == "ok"
    assert worker.pid is not None and worker.pid != os.getpid()
    job = _finished(client, client.post("/v1/search-jobs", json=JOB).json()["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert [c["status"] for c in _candidates(client, job)] == ["scored"] * 4
    # The child's worker hooks reach the API's metrics.
    metrics = client.get("/metrics").text
    assert 'nas_candidates_recorded_total{status="scored"} 4' in metrics
    assert 'nas_worker_jobs_total{outcome="succeeded"} 1' in metrics
    assert 'nas_worker_heartbeats_total{held="true"}' in metrics
    assert "nas_worker_restarts_total{" not in metrics


def test_a_worker_process_stuck_in_scoring_is_replaced_and_the_job_finishes(
        make_client) -> None:
    from nas_service.api.app import build_worker

    client = make_client(worker_in_process=False, worker_process=True,
                         scoring_timeout_seconds=2, heartbeat_seconds=0.2, lease_seconds=5)
    service = client.app.state.service
    # The app's worker, with the body that gets stuck once, started as the lifespan would.
    service.worker = build_worker(service, service.scorer, target=stuck_once_worker)
    service.worker.start()
    try:
        first = wait_until(lambda: service.worker.pid, "the first worker process")
        job = client.post("/v1/search-jobs", json=JOB).json()
        # The watchdog failed the stuck batch and gave the job back; the process exited 3 and a
        # fresh one took the job again and finished it without the stuck candidates.
        job = _finished(client, job["id"])
        assert job["status"] == "succeeded" and job["attempts"] == 2
        assert service.worker.restarts == 1 and service.worker.pid != first
        statuses = [c["status"] for c in _candidates(client, job)]
        failed = [c for c in _candidates(client, job) if c["status"] == "failed"]
        assert failed and statuses.count("scored") == 4 - len(failed)
        assert all("scoring did not finish in" in c["reason"] for c in failed)
        expected = {'nas_worker_restarts_total{reason="stuck"} 1',
                    f'nas_candidates_recorded_total{{status="failed"}} {len(failed)}',
                    'nas_worker_jobs_total{outcome="abandoned"} 1',
                    'nas_worker_jobs_total{outcome="succeeded"} 1'}
        try:
            wait_until(lambda: expected <= set(_worker_metrics(client)), "the metrics", 10)
        except AssertionError:
            raise AssertionError(_worker_metrics(client)) from None
        assert client.get("/readyz").json()["checks"]["worker"] == "ok"
    finally:
        service.worker.shut_down(5)


def test_a_killed_worker_process_is_started_again_while_the_api_answers(make_client) -> None:
    client = make_client(worker_in_process=True, worker_process=True)
    worker = client.app.state.service.worker
    first = wait_until(lambda: worker.pid, "the worker process")
    os.kill(first, signal.SIGKILL)
    checks = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r.json(),
                    "/readyz to report the worker down")["checks"]
    assert checks["worker"].startswith("restarting: the last worker process was killed by "
                                       "SIGKILL"), checks
    assert client.get("/healthz").status_code == 200
    wait_until(lambda: worker.pid not in (None, first), "a new worker process")
    wait_until(lambda: client.get("/readyz").status_code == 200, "the new worker process")
    assert 'nas_worker_restarts_total{reason="crashed"} 1' in client.get("/metrics").text
    job = _finished(client, client.post("/v1/search-jobs", json=JOB).json()["id"])
    assert job["status"] == "succeeded"
