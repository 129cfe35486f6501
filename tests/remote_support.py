"""A real ``nas-service serve`` process for the client and remote command-line tests.

``remote_service`` is module-scoped: each test module that uses it starts one uvicorn process on a
free port (SQLite file and checkpoints under a temporary folder, the tiny GHN of
``service_support``, its worker process) and stops it with SIGTERM after the module's last
test. API keys are on (``API_KEY``), so every test also exercises the key header, and the
unauthorized case needs no second server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_support import free_port, service_env, start_server, stop_server, wait_ready

API_KEY = "client-test-key"


@dataclass(frozen=True)
class RemoteService:
    url: str
    api_key: str
    state_dir: Path


@pytest.fixture(scope="module")
def remote_service(tmp_path_factory: pytest.TempPathFactory,
                   ranked_tiny_ghn_path: Path) -> Iterator[RemoteService]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path_factory.mktemp("remote-service")
    server = start_server(service_env(state, ranked_tiny_ghn_path, NAS_API_KEYS=API_KEY), port)
    try:
        wait_ready(url, server)
        yield RemoteService(url=url, api_key=API_KEY, state_dir=state)
    finally:
        output = stop_server(server)
    assert "Traceback" not in output, output
