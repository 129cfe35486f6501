"""``nas-service worker`` as a real process: it runs queued jobs, and SIGTERM makes it release the
job it holds (queued again, the attempt not counted, recorded candidates kept) and exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    SMALL_FLOPS,
    isolated_settings,
    requires_fashion_mnist,
    service_env,
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


def _queued_job(data_dir, *, seed: int, candidates: int) -> tuple[Any, Any]:
    """A migrated SQLite database in ``data_dir`` (the service's ``nas.db``) with one random
    ``cells`` search job of ``candidates`` small networks queued: ``(engine, job)``."""
    url = f"sqlite:///{data_dir / 'nas.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task="fashion-mnist",
                                  strategy="random", seed=seed, budget_candidates=candidates,
                                  constraints={"max_flops": SMALL_FLOPS})
    return engine, job


def test_sigterm_releases_the_job_and_exits_cleanly(tmp_path, tiny_ghn_path) -> None:
    data_dir = tmp_path / "state"
    engine, job = _queued_job(data_dir, seed=1, candidates=1000)
    worker = subprocess.Popen(
        [sys.executable, "-m", "nas_service", "worker", "--id", "process-under-test"],
        env=service_env(data_dir, tiny_ghn_path, NAS_GHN_BATCH_SIZE="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with read_session(engine) as session:
                current = listings.get_job(session, job.id)
            if current.progress_done >= 2:
                break
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            assert time.monotonic() < deadline, "the worker recorded nothing"
            time.sleep(0.1)
        assert current.lease_owner == "process-under-test"
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output
    with read_session(engine) as session:
        released = listings.get_job(session, job.id)
        events = [e.kind for e in listings.list_events(session, job.id)]
    engine.dispose()
    assert released.status.value == "queued"
    assert released.attempts == 0 and released.lease_token is None
    assert 2 <= released.progress_done < 1000
    assert events[-1] == "released"


def test_worker_once_returns_at_once_on_an_empty_queue(tmp_path, tiny_ghn_path,
                                                       monkeypatch) -> None:
    from nas_service.commands import main
    from nas_service.settings import get_settings

    isolated_settings(monkeypatch, NAS_DATA_DIR=str(tmp_path), NAS_GHN_PATH=str(tiny_ghn_path),
                       NAS_DEVICE="cpu")
    try:
        assert main(["worker", "--once", "--id", "empty-queue"]) == 0
    finally:
        get_settings.cache_clear()
    assert (tmp_path / "nas.db").is_file()


def test_a_worker_stuck_in_scoring_gives_its_job_back_and_exits_3(tmp_path, tiny_ghn_path,
                                                                  monkeypatch) -> None:
    import threading

    from nas_service.commands import main
    from nas_service.scoring import ArchitectureScorer
    from nas_service.search import EXIT_WORKER_STUCK
    from nas_service.settings import get_settings

    engine, job = _queued_job(tmp_path, seed=3, candidates=2)
    release = threading.Event()

    def never_returns(self, *args, **kwargs):  # a kernel that spins, until the test ends
        release.wait(120)
        raise RuntimeError("released by the test")

    monkeypatch.setattr(ArchitectureScorer, "_evaluate", never_returns)
    isolated_settings(monkeypatch, NAS_DATA_DIR=str(tmp_path), NAS_GHN_PATH=str(tiny_ghn_path),
                       NAS_DEVICE="cpu", NAS_SCORING_TIMEOUT_SECONDS="2",
                       NAS_HEARTBEAT_SECONDS="0.2", NAS_LEASE_SECONDS="5")
    try:
        assert main(["worker", "--id", "stuck"]) == EXIT_WORKER_STUCK
    finally:
        release.set()
        get_settings.cache_clear()
    with read_session(engine) as session:
        stored = listings.get_job(session, job.id)
        candidates = listings.list_candidates(session, job.id, order_by="index").items
    assert stored.status.value == "queued" and stored.attempts == 1
    assert [c.status.value for c in candidates] == ["failed", "failed"]
    assert all("did not finish in 4 s" in c.reason for c in candidates)
    engine.dispose()
