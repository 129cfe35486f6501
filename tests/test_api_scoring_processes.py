"""Cache misses scored in processes of their own (``NAS_SCORING_PROCESSES``): in an app on both
databases, and in a real ``nas-service serve`` (SQLite, its worker process running a search)
whose scoring child is paused, killed and whose server gets SIGTERM.

A paused child (SIGSTOP) holds the misses it was given without answering, which is how these
tests keep a miss in flight for as long as they need, without timing anything."""

from __future__ import annotations

import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    SMALL_FLOPS,
    assert_problem,
    free_port,
    requires_fashion_mnist,
    service_env,
    start_server,
    tiny_graph_doc,
    wait_ready,
    wait_until,
)

from nas_service.api.errors import Problem  # noqa: E402
from nas_service.data import DatasetError  # noqa: E402
from nas_service.db import listings, make_engine, read_session  # noqa: E402
from nas_service.ghn import UnsupportedArchitectureError  # noqa: E402
from nas_service.graph import GraphBuilder  # noqa: E402
from nas_service.scoring import ScoringTooCostly  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

WAIT_SECONDS = 120.0
"""Upper bound on anything these tests wait for (a scoring child starting on a busy machine)."""
GRACE_SECONDS = 3.0


def _batches(client: Any) -> int:
    """How many batches the API's scoring processes were given (``/metrics``)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("nas_scoring_batch_architectures_count"):
            return int(float(line.split()[-1]))
    return 0


# ---- in an app, on SQLite and PostgreSQL -------------------------------------------------------


def test_identical_concurrent_misses_are_scored_once_and_batched(make_client) -> None:
    client = make_client(scoring_processes=1)
    wait_until(lambda: client.get("/readyz").status_code == 200, "the scoring process")
    assert client.get("/readyz").json()["checks"]["scoring"] == "ok"

    first = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
    assert first.status_code == 201, first.text
    assert client.get(first.headers["Location"]).json()["content_hash"] == (
        first.json()["content_hash"])

    results: dict[int, httpx.Response] = {}

    def post(i: int) -> None:  # three graphs, each posted twice at once
        results[i] = client.post("/v1/architectures", json={"graph": tiny_graph_doc(5 + i % 3)})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_graph: dict[str, list[int]] = {}
    for r in results.values():
        assert r.status_code in (200, 201), r.text
        by_graph.setdefault(r.json()["id"], []).append(r.status_code)
    # Each graph stored once: one request created it (201), the other got the same row (200).
    assert sorted(sorted(codes) for codes in by_graph.values()) == [[200, 201]] * 3
    assert _batches(client) <= 1 + 3  # the first miss, then at most one batch per graph


def _resident_kib(pid: int) -> tuple[int, int]:
    """``(resident, peak resident)`` memory of ``pid`` in KiB (``/proc/PID/status``)."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_an_idle_scoring_process_hands_back_what_scoring_took(make_client) -> None:
    client = make_client(scoring_processes=1)
    wait_until(lambda: client.get("/readyz").status_code == 200, "the scoring process")
    pid = client.app.state.service.scoring_pool._children[0].process.pid
    at_rest, _ = _resident_kib(pid)
    # Four branches of 128 channels at full resolution, concatenated: each branch's activation
    # of a 64-image batch takes 25 MiB, a block glibc serves from its heap (below the 32 MiB the
    # service sets for reuse) rather than mapping it, and all four are alive at once.
    b = GraphBuilder((1, 28, 28), name="wide-branches")
    branches = [b.add("relu", b.add("conv2d", b.input, id=f"conv{i}", out_channels=128,
                                    kernel_size=3, padding=1), id=f"act{i}") for i in range(4)]
    x = b.add("global_avg_pool", b.add("concat", *branches, id="cat"), id="pool")
    graph = b.build(b.add("linear", x, id="fc", out_features=10), num_classes=10)
    miss = client.post("/v1/architectures", json={"graph": graph.to_dict()})
    assert miss.status_code == 201, miss.text
    _, peak = _resident_kib(pid)
    grown = peak - at_rest
    assert grown > 64 * 1024, grown  # enough to tell a release from noise
    # Kept, the freed blocks would stay resident until the process ends; idle, it releases them.
    wait_until(lambda: _resident_kib(pid)[0] - at_rest < grown / 2,
               "the idle scoring process to hand back its peak", 30)


def test_a_scoring_process_that_cannot_start_answers_503_not_ready(
        make_settings, tiny_ghn_path, tmp_path) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from nas_service.api import create_app
    from nas_service.scoring import ArchitectureScorer

    ghn = tmp_path / "ghn.safetensors"
    shutil.copyfile(tiny_ghn_path, ghn)
    scorer = ArchitectureScorer.load(ghn, device="cpu", eval_images=64,
                                     recalibration_batches=1, recalibration_batch_size=32)
    app = create_app(make_settings(ghn_path=ghn, scoring_processes=1), scorer=scorer)
    ghn.write_bytes(b"not a checkpoint any more")  # what the child will find
    with TestClient(app) as client:
        miss = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
        body = assert_problem(miss, 503, "scoring-unavailable")
        assert "could not start" in body["detail"] and miss.headers["Retry-After"]
        ready = client.get("/readyz")
        assert_problem(ready, 503, "not-ready")
        assert ready.json()["checks"]["scoring"] == "starting"
        # Within the back-off, the next miss is refused at once with the same reason.
        again = client.post("/v1/architectures", json={"graph": tiny_graph_doc(5)})
        assert assert_problem(again, 503, "scoring-unavailable")["detail"] == body["detail"]


def test_a_scoring_process_that_stops_answering_is_killed_and_replaced(make_client) -> None:
    client = make_client(scoring_processes=1, scoring_timeout_seconds=5)
    wait_until(lambda: client.get("/readyz").status_code == 200, "the scoring process")
    pool = client.app.state.service.scoring_pool
    stuck = pool._children[0].process
    os.kill(stuck.pid, signal.SIGSTOP)  # never answers, as a kernel that spins forever would
    try:
        miss = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
        body = assert_problem(miss, 503, "scoring-unavailable")
        assert "did not finish scoring 1 architecture(s) in 5 s" in body["detail"]
        assert miss.headers["Retry-After"]
        wait_until(lambda: not stuck.is_alive(), "the stuck scoring process to be killed")
    finally:
        if stuck.is_alive():
            os.kill(stuck.pid, signal.SIGCONT)
    # Nothing of the stuck request was stored; a new process scores the next request (without
    # a deadline here: a busy test machine may take longer than 5 s for a cold start).
    pool.timeout_seconds = None
    again = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
    assert again.status_code == 201, again.text
    assert pool._children[0].process.pid != stuck.pid


@pytest.mark.parametrize("error", [
    ScoringTooCostly("memory", 10, 5, "needs 10 bytes"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes"),
    UnsupportedArchitectureError("op 'x' unknown"),
    DatasetError("no data"),
    ValueError("does not fit"),
    KeyError("odd"),
])
def test_a_failure_in_the_scoring_process_reaches_the_api_as_its_kind(error) -> None:
    from nas_service.api.routers.architectures import _scoring_problem
    from nas_service.api.scoring_processes import _describe, _rebuild

    rebuilt = _rebuild(_describe(error))
    problem, expected = _scoring_problem(rebuilt), _scoring_problem(error)
    assert isinstance(problem, Problem) == isinstance(expected, Problem)
    if isinstance(expected, Problem):
        assert (problem.status, problem.slug, problem.extra) == (
            expected.status, expected.slug, expected.extra)
    if isinstance(error, ScoringTooCostly):
        assert (rebuilt.resource, rebuilt.estimate, rebuilt.limit) == ("memory", 10, 5)


# ---- a real server ---------------------------------------------------------------------------


def _scoring_children(server_pid: int) -> list[int]:
    """The server's scoring processes: its children started by multiprocessing's spawn at the
    server's CPU priority (its worker process runs at a lower one)."""
    own_nice = os.getpriority(os.PRIO_PROCESS, server_pid)
    return [pid for pid, nice in _spawned_children(server_pid) if nice == own_nice]


def _spawned_children(server_pid: int) -> list[tuple[int, int]]:
    """The server's children started by multiprocessing's spawn (its resource tracker
    excepted), with their nice values."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if (int(fields[1]) == server_pid and "spawn_main" in command
                and "resource_tracker" not in command):
            found.append((int(entry.name), int(fields[16])))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _InFlight(threading.Thread):
    """A ``POST /v1/architectures`` sent from a thread, its response kept."""

    def __init__(self, base: str, graph: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.base, self.graph = base, graph
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = httpx.post(self.base + "/v1/architectures",
                                       json={"graph": self.graph}, timeout=WAIT_SECONDS)
        except httpx.HTTPError as e:
            self.error = e

    def result(self) -> httpx.Response:
        self.join(WAIT_SECONDS)
        assert self.response is not None, self.error
        return self.response


def test_serve_scores_misses_in_a_child_that_can_be_full_killed_and_stopped(
        tmp_path, tiny_ghn_path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "state"
    log_path = tmp_path / "server.log"
    server = start_server(service_env(
        data_dir, tiny_ghn_path, NAS_SCORING_PROCESSES="1", NAS_SCORING_QUEUE="1",
        NAS_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS), NAS_GHN_BATCH_SIZE="1"),
        port, log_path)
    paused: list[int] = []
    try:
        wait_ready(base, server, log_path)
        client = httpx.Client(base_url=base, timeout=WAIT_SECONDS)
        (child,) = _scoring_children(server.pid)
        spawned = [pid for pid, _ in _spawned_children(server.pid)]
        assert len(spawned) == 2  # the scoring process and the worker process

        # A search runs in the server's worker process; a miss is answered meanwhile.
        job = client.post("/v1/search-jobs", json={
            "space": "cells", "seed": 3, "budget": {"candidates": 5000},
            "constraints": {"max_flops": SMALL_FLOPS}}).json()
        wait_until(lambda: client.get(job["links"]["self"]).json()["progress"]["done"] > 0,
               "the search's first candidate")
        miss = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
        assert miss.status_code == 201, miss.text

        # The queue holds one architecture: a second distinct miss is refused, an identical one
        # waits for the first one's result.
        os.kill(child, signal.SIGSTOP)
        paused.append(child)
        batches = _batches(client)
        waiting = _InFlight(base, tiny_graph_doc(5))
        wait_until(lambda: _batches(client) > batches, "the miss to reach the scoring process")
        same = _InFlight(base, tiny_graph_doc(5))
        refused = client.post("/v1/architectures", json={"graph": tiny_graph_doc(6)})
        body = assert_problem(refused, 503, "busy")
        assert int(refused.headers["Retry-After"]) > 0 and "retry" in body["detail"]
        os.kill(child, signal.SIGCONT)
        paused.remove(child)
        assert waiting.result().status_code == 201, waiting.result().text
        assert same.result().status_code == 200
        assert same.result().json()["id"] == waiting.result().json()["id"]

        # The child dies while scoring: that miss is a 503 problem, the next one is scored by a
        # new child.
        os.kill(child, signal.SIGSTOP)
        paused.append(child)
        batches = _batches(client)
        doomed = _InFlight(base, tiny_graph_doc(7))
        wait_until(lambda: _batches(client) > batches, "the miss to reach the scoring process")
        os.kill(child, signal.SIGKILL)
        paused.remove(child)
        body = assert_problem(doomed.result(), 503, "scoring-unavailable")
        assert "exited" in body["detail"] and doomed.result().headers["Retry-After"]
        again = client.post("/v1/architectures", json={"graph": tiny_graph_doc(7)})
        assert again.status_code == 201, again.text
        (child,) = wait_until(lambda: _scoring_children(server.pid), "the new scoring process")

        # SIGTERM with a miss in flight (its child paused) and the search running: the server
        # stops within its grace period plus the bounded end of its lifespan.
        os.kill(child, signal.SIGSTOP)
        paused.append(child)
        batches = _batches(client)
        stranded = _InFlight(base, tiny_graph_doc(8))
        wait_until(lambda: _batches(client) > batches, "the miss to reach the scoring process")
        client.close()
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(WAIT_SECONDS)
        stopped_after = time.monotonic() - signalled
        stranded.join(WAIT_SECONDS)
    finally:
        for pid in paused:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
        if server.poll() is None:
            server.kill()
            server.wait()
    output = log_path.read_text()
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    # Grace for the request in flight, EXIT_SECONDS for the paused child, and slack for a
    # machine busy with other tests; the uvicorn default would wait for the request for ever.
    assert stopped_after < GRACE_SECONDS + 30, (stopped_after, output)
    assert not _alive(child), "the scoring process outlived the server"
    assert not any(_alive(pid) for pid in spawned), "a child outlived the server"
    # The request the grace period cut short was answered, with a problem it can retry.
    assert_problem(stranded.result(), 503, "scoring-unavailable")
    engine = make_engine(f"sqlite:///{data_dir / 'nas.db'}")
    try:
        with read_session(engine) as session:
            stored = listings.get_job(session, job["id"])
            assert stored is not None
            # Released for another worker to claim at once, its attempt not counted.
            assert stored.status.value == "queued" and stored.lease_token is None
            assert stored.attempts == 0
    finally:
        engine.dispose()
