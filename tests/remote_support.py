"""A real ``nas-service serve`` process for the client and remote command-line tests.

``remote_service`` is module-scoped: each test module that uses it starts one uvicorn process on a
free port (SQLite file and checkpoints under a temporary folder, the tiny GHN of
``service_support``, its in-process worker) and stops it with SIGTERM after the module's last
test. API keys are on (``API_KEY``), so every test also exercises the key header, and the
unauthorized case needs no second server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from service_support import service_env

API_KEY = "client-test-key"
STARTUP_SECONDS = 120.0


@dataclass(frozen=True)
class RemoteService:
    url: str
    api_key: str
    state_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the server exited with {process.returncode}: {output}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


@pytest.fixture(scope="module")
def remote_service(tmp_path_factory: pytest.TempPathFactory,
                   tiny_ghn_path: Path) -> Iterator[RemoteService]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path_factory.mktemp("remote-service")
    env = service_env(state, tiny_ghn_path, NAS_API_KEYS=API_KEY)
    server = subprocess.Popen(
        [sys.executable, "-m", "nas_service", "serve", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(url, server)
        yield RemoteService(url=url, api_key=API_KEY, state_dir=state)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert "Traceback" not in output, output
