"""Hostile clients against a real ``nas-service serve`` process (what a TestClient cannot show):
connections that stall in their headers or body are answered 408 and closed within the read
deadline, and resource bombs leave the process alive and small."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support")

import httpx  # noqa: E402
from service_support import (  # noqa: E402
    free_port,
    requires_fashion_mnist,
    service_env,
    start_server,
    stop_server,
    wait_ready,
)
from test_admission import BOMBS  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = requires_fashion_mnist

READ_SECONDS = 1.0
GRACE_SECONDS = 10.0  # a loaded machine may be slow to fire the timer; far below uvicorn's 75 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_ghn_path: Path):
    folder = tmp_path_factory.mktemp("hostile-server")
    port = free_port()
    env = service_env(folder, tiny_ghn_path, NAS_REQUEST_READ_SECONDS=str(READ_SECONDS),
                      NAS_WORKER_IN_PROCESS="false")
    process = start_server(env, port, folder / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, folder / "server.log")
        yield url, port, process
    finally:
        stop_server(process)


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(GRACE_SECONDS + READ_SECONDS)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the connection is still open after {GRACE_SECONDS + READ_SECONDS} s")
    return received, time.monotonic() - started


@pytest.mark.parametrize("sent", [
    b"",
    b"GET /healthz HT",
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
    b"POST /v1/architectures HTTP/1.1\r\nHost: localhost\r\n",
])
def test_a_connection_that_stalls_in_its_headers_is_closed(server, sent: bytes) -> None:
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        received, seconds = _until_closed(sock)
    assert seconds < READ_SECONDS + GRACE_SECONDS
    if sent:
        assert received.startswith(b"HTTP/1.1 408"), received


def test_a_connection_that_stalls_in_its_body_gets_a_408_problem(server) -> None:
    _, port, _ = server
    head = (b"POST /v1/architectures HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + b'{"graph": ')
        received, seconds = _until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"application/problem+json" in received and b"request-timeout" in received
    assert seconds < READ_SECONDS + GRACE_SECONDS


def test_a_kept_alive_connection_is_not_cut_while_it_behaves(server) -> None:
    url, _, _ = server
    with httpx.Client(base_url=url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(READ_SECONDS * 1.5)  # idle between requests: the keep-alive timeout's


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):  # the peak, not the current size
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _service_rss_bytes(pid: int) -> int:
    """The peaks of the server and of its child processes (the scoring processes), summed:
    the service's memory is all of them."""
    total = _rss_bytes(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                total += _rss_bytes(int(entry.name))
        except (OSError, AssertionError):
            continue  # gone meanwhile, or a zombie
    return total


def test_resource_bombs_leave_the_server_alive_and_small(server) -> None:
    url, _, process = server
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, doc in BOMBS.items():
            r = client.post("/v1/architectures", json={"graph": doc})
            assert r.status_code == 422, (name, r.text)
            assert r.json()["type"].endswith("scoring-too-costly")
        assert client.post("/v1/architectures", json={"space": "cells", "seed": 0}
                           ).status_code in (200, 201)
        metrics = client.get("/metrics").text
    assert process.poll() is None
    assert 'status="500"' not in metrics
    assert _service_rss_bytes(process.pid) < 2 * 1024**3
    assert json.loads(httpx.get(url + "/healthz").text) == {"status": "ok"}
