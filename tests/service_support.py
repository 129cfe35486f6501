"""Fixtures and helpers shared by the API, worker and end-to-end tests (imported by them).

Everything is real: the database comes from conftest's ``database_url``/``engine`` fixtures
(SQLite and PostgreSQL), the GHN is a tiny but real :class:`GraphHyperNetwork` saved as a
checkpoint, the data is the installed Fashion-MNIST. What is small is the work: 64 validation
images per score and one recalibration batch of 32, so a score costs milliseconds.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from nas_service.data import DatasetError, get_task, resolve_root
from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.ghn.checkpoint import save_ghn
from nas_service.graph import ArchitectureGraph, GraphBuilder
from nas_service.scoring import ArchitectureScorer
from nas_service.scoring.ranking_head import RankingHead, fit_ranking_head, head_path_for
from nas_service.scoring.scorer import file_sha256
from nas_service.settings import Settings

TINY_GHN = GHNConfig(hidden=16, layers=2, code=8, block_out=8, block_in=8, vector=8)
EVAL_IMAGES = 64
# Cells of the "cells" space under this bound cost ~0.1 s each to score here.
SMALL_FLOPS = 2_000_000


def _fashion_mnist_present() -> bool:
    try:
        folder, _ = resolve_root(get_task("fashion-mnist"))
    except DatasetError:
        return False
    return folder.is_dir()


requires_fashion_mnist = pytest.mark.skipif(
    not _fashion_mnist_present(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or set "
           "NAS_DATASETS_DIR)")


def tiny_graph(channels: int = 4, *, input_shape: tuple[int, ...] = (1, 28, 28),
               num_classes: int = 10, name: str | None = None) -> ArchitectureGraph:
    """conv(3x3, stride 2) -> batch norm -> relu -> global pool -> linear: a distinct graph per
    ``channels``."""
    b = GraphBuilder(input_shape, name=name or f"tiny-{channels}")
    x = b.add("conv2d", b.input, id="conv", out_channels=channels, kernel_size=3, stride=2,
              padding=1)
    x = b.add("batch_norm", x, id="bn")
    x = b.add("relu", x, id="act")
    x = b.add("global_avg_pool", x, id="pool")
    return b.build(b.add("linear", x, id="fc", out_features=num_classes),
                   num_classes=num_classes)


def tiny_graph_doc(channels: int = 4, **kwargs: Any) -> dict[str, Any]:
    return tiny_graph(channels, **kwargs).to_dict()


@pytest.fixture(scope="session")
def tiny_ghn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ghn") / "ghn.safetensors"
    save_ghn(GraphHyperNetwork(TINY_GHN), path, task="fashion-mnist",
             training={"step": 0, "note": "untrained test GHN"})
    return path


def made_up_population(count: int = 30, seed: int = 0
                       ) -> tuple[list[float], list[int], list[float]]:
    """``(surrogate, parameters, trained)`` of made-up architectures whose trained accuracy grows
    with both the surrogate and log-size, plus a little noise: each cheap score alone ranks
    them only in part."""
    rng = random.Random(seed)
    surrogate, parameters, trained = [], [], []
    for _ in range(count):
        s, p = rng.uniform(0.3, 0.7), int(10 ** rng.uniform(3, 6))
        surrogate.append(s)
        parameters.append(p)
        trained.append(0.5 + 0.4 * s + 0.03 * math.log10(p) + rng.gauss(0, 0.005))
    return surrogate, parameters, trained


def fit_test_ranking_head(checkpoint: Path | None = None) -> RankingHead:
    """A ranking head fit on :func:`made_up_population`, tied to ``checkpoint`` when given."""
    return fit_ranking_head(*made_up_population(), task="fashion-mnist",
                            target="test accuracy after 5 epochs",
                            ghn_sha256=file_sha256(checkpoint) if checkpoint else None)


@pytest.fixture(scope="session")
def ranked_tiny_ghn_path(tiny_ghn_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny GHN with a ranking head fit on its own checkpoint beside it, as the
    bundled GHN has."""
    path = tmp_path_factory.mktemp("ranked-ghn") / "ghn.safetensors"
    shutil.copyfile(tiny_ghn_path, path)
    fit_test_ranking_head(path).save(head_path_for(path))
    return path


@pytest.fixture(scope="session")
def scorer(tiny_ghn_path: Path) -> ArchitectureScorer:
    """One scorer for the whole session: the task data is decoded once."""
    return ArchitectureScorer.load(tiny_ghn_path, device="cpu", eval_images=EVAL_IMAGES,
                                   recalibration_batches=1, recalibration_batch_size=32)


@pytest.fixture(scope="session")
def ranked_scorer(ranked_tiny_ghn_path: Path) -> ArchitectureScorer:
    """A scorer of the tiny GHN with its ranking head, for the whole session."""
    return ArchitectureScorer.load(ranked_tiny_ghn_path, device="cpu", eval_images=EVAL_IMAGES,
                                   recalibration_batches=1, recalibration_batch_size=32)


def service_env(data_dir: Path, ghn_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``nas-service serve``/``worker`` subprocess: the embedded defaults
    under ``data_dir``, the GHN at ``ghn_path``, small scoring work, quick leases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS_")}
    if "NAS_DATASETS_DIR" in os.environ:
        env["NAS_DATASETS_DIR"] = os.environ["NAS_DATASETS_DIR"]
    env.update(NAS_DATA_DIR=str(data_dir), NAS_GHN_PATH=str(ghn_path),
               NAS_EVAL_IMAGES=str(EVAL_IMAGES), NAS_RECALIBRATION_BATCHES="1",
               NAS_RECALIBRATION_BATCH_SIZE="32", NAS_LEASE_SECONDS="10",
               NAS_HEARTBEAT_SECONDS="1", NAS_WORKER_POLL_SECONDS="0.2",
               NAS_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def isolated_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """The process's settings read from ``env`` alone (other NAS_* variables removed)."""
    from nas_service.settings import get_settings

    for name in [k for k in os.environ if k.startswith("NAS_") and k != "NAS_DATASETS_DIR"]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def service_settings(database_url: str, data_dir: Path, ghn_path: Path | None = None,
                     **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=database_url, data_dir=data_dir, ghn_path=ghn_path,
        eval_images=EVAL_IMAGES, recalibration_batches=1, recalibration_batch_size=32,
        lease_seconds=5.0, heartbeat_seconds=0.5, worker_poll_seconds=0.1,
        worker_in_process=False, worker_process=False, scoring_processes=0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_settings(engine: Any, database_url: str, tmp_path: Path,
                  tiny_ghn_path: Path) -> Callable[..., Settings]:
    """Settings on the test database (emptied by ``engine``) with the tiny GHN."""
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("ghn_path", tiny_ghn_path)
        return service_settings(database_url, tmp_path / "state", **overrides)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings],
                scorer: ArchitectureScorer) -> Iterator[Callable[..., Any]]:
    """``make_client(**settings_overrides)``: a started TestClient on a fresh app (no worker
    unless ``worker_in_process=True``: a thread sharing the session's GHN, or with
    ``worker_process=True`` a child process loading it), with the session's scorer unless
    ``scorer=`` gives another."""
    from fastapi.testclient import TestClient

    from nas_service.api import create_app

    clients: list[TestClient] = []

    def make(scorer: ArchitectureScorer = scorer, **overrides: Any) -> TestClient:
        app = create_app(make_settings(**overrides), scorer=scorer)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    return make_client()


def wait_until(condition: Callable[[], Any], what: str, seconds: float = 120.0,
               interval: float = 0.1) -> Any:
    """``condition()``'s first truthy value, polled every ``interval``; fails naming ``what``
    after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status`` (and type ``slug``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    if slug is not None:
        assert body["type"] == f"urn:nas-service:problem:{slug}", body
    return body


# ---- a real `nas-service serve` process (end-to-end, client, browser, schemathesis tests) ----

SERVER_STARTUP_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log_path: Path | None = None
                 ) -> subprocess.Popen:
    """``python -m nas_service serve`` on ``port``; its output goes to ``log_path`` when given,
    else to a text pipe that :func:`stop_server` drains."""
    command = [sys.executable, "-m", "nas_service", "serve", "--port", str(port),
               "--log-level", "warning"]
    if log_path is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    with open(log_path, "w") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path | None = None) -> None:
    """Polls ``/readyz`` until 200; fails with the server's output if it exits first."""
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text() if log_path is not None else (
                process.stdout.read() if process.stdout else "")
            raise AssertionError(f"the server exited with {process.returncode}: {output}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def stop_server(process: subprocess.Popen) -> str:
    """SIGTERM (a graceful uvicorn shutdown), SIGKILL after 60 s; returns the piped output
    (empty when it went to a log file)."""
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


def make_worker(engine: Any, scorer: ArchitectureScorer, tmp_path: Path, **kwargs: Any) -> Any:
    """A worker on ``engine`` with short leases and polls, storing checkpoints under
    ``tmp_path``; ``kwargs`` override its options."""
    from nas_service.search import CheckpointStore, Worker

    options = dict(worker_id="test-worker", lease_seconds=5.0, heartbeat_seconds=0.2,
                   batch_size=3, poll_seconds=0.05)
    options.update(kwargs)
    return Worker(engine, scorer, CheckpointStore(tmp_path / "checkpoints"), **options)


def job_state(engine: Any, job_id: str) -> tuple[Any, list[Any]]:
    """A job as stored, and its candidates in index order."""
    from nas_service.db import listings, read_session

    with read_session(engine) as session:
        job = listings.get_job(session, job_id)
        candidates = listings.list_candidates(session, job_id, order_by="index", limit=500).items
        return job, candidates
