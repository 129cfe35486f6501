"""Crash recovery: two real ``nas-service worker`` processes share a job's database; the one
holding the job is killed with SIGKILL mid-job. The survivor takes the job over once the lease
expires (no operator action), the job finishes, every candidate index is stored exactly once and
nothing is left "running"."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    SMALL_FLOPS,
    requires_fashion_mnist,
    service_env,
    wait_until,
)

from nas_service.db import (  # noqa: E402
    listings,
    make_engine,
    migrate,
    queue,
    read_session,
    write_session,
)

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

BUDGET = 10
LEASE_SECONDS = "3"
WAIT_SECONDS = 150.0


def _start_worker(name: str, url: str, data_dir, ghn_path) -> subprocess.Popen:
    env = service_env(data_dir, ghn_path, NAS_DATABASE_URL=url, NAS_LEASE_SECONDS=LEASE_SECONDS,
                      NAS_HEARTBEAT_SECONDS="1", NAS_GHN_BATCH_SIZE="1")
    return subprocess.Popen([sys.executable, "-m", "nas_service", "worker", "--id", name],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_job_survives_the_sigkill_of_its_worker(empty_database_url, tmp_path,
                                                  tiny_ghn_path) -> None:
    url = empty_database_url
    migrate.upgrade(url)
    engine = make_engine(url)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="macro", task="fashion-mnist",
                                  strategy="random", seed=5, budget_candidates=BUDGET,
                                  constraints={"max_flops": SMALL_FLOPS})

    def current():
        with read_session(engine) as session:
            return listings.get_job(session, job.id)

    first = _start_worker("first", url, tmp_path / "a", tiny_ghn_path)
    second = None
    try:
        wait_until(lambda: current().progress_done >= 2 and current().lease_owner == "first",
                   "the first worker to record two candidates", WAIT_SECONDS, 0.2)
        second = _start_worker("second", url, tmp_path / "b", tiny_ghn_path)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = current().progress_done
        assert killed_at < BUDGET, "the first worker finished before it could be killed"
        finished = wait_until(
            lambda: (j := current()).status.value not in ("queued", "running") and j,
            "the second worker to finish the job", WAIT_SECONDS, 0.2)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    with read_session(engine) as session:
        indices = [c.index for c in
                   listings.list_candidates(session, job.id, order_by="index", limit=500).items]
        running = listings.list_jobs(session, status="running").items
    engine.dispose()
    assert finished.status.value == "succeeded", finished.error
    assert finished.lease_owner in (None, "second")
    assert finished.attempts == 2  # the killed attempt and the one that finished
    assert indices == list(range(BUDGET))  # each index exactly once, none lost
    assert running == []
