"""End to end: ``python -m nas_service serve`` as a real uvicorn process on a free port, with the
embedded defaults (a SQLite file under NAS_DATA_DIR, migrated at start-up; the in-process
worker) and a tiny GHN named by NAS_GHN_PATH."""

from __future__ import annotations

import hashlib
import signal
import time

import httpx
import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    free_port,
    isolated_settings,
    requires_fashion_mnist,
    service_env,
    start_server,
    stop_server,
    tiny_graph_doc,
    wait_ready,
)

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

def test_serve_scores_an_architecture_and_runs_a_search(tmp_path, tiny_ghn_path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(service_env(tmp_path / "state", tiny_ghn_path), port)
    try:
        wait_ready(base, server)
        assert (tmp_path / "state" / "nas.db").is_file()
        with httpx.Client(base_url=base, timeout=60) as client:
            posted = client.post("/v1/architectures", json={"graph": tiny_graph_doc(4)})
            assert posted.status_code == 201, posted.text
            assert posted.json()["score"]["images"] == EVAL_IMAGES

            job = client.post("/v1/search-jobs", json={
                "space": "cells", "seed": 2, "budget": {"candidates": 4},
                "constraints": {"max_flops": SMALL_FLOPS}}).json()
            deadline = time.monotonic() + 120
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
                job = client.get(job["links"]["self"]).json()
            assert job["status"] == "succeeded", job
            assert job["progress"]["done"] == 4

            best = job["best_candidate"]
            download = client.get(best["checkpoint_url"])
            assert download.status_code == 200
            assert download.headers["etag"] == (
                f'"{hashlib.sha256(download.content).hexdigest()}"')
            metrics = client.get("/metrics").text
            assert 'nas_candidates_recorded_total{status="scored"} 4' in metrics
    finally:
        output = stop_server(server)
    # uvicorn shuts down gracefully (lifespan end: the worker thread is stopped), then re-raises
    # the signal it caught, so the status is SIGTERM's.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output


def test_serve_without_its_ghn_fails_with_a_hint(tmp_path, monkeypatch, capsys) -> None:
    from nas_service.commands import main
    from nas_service.settings import get_settings

    isolated_settings(monkeypatch, NAS_DATA_DIR=str(tmp_path),
                       NAS_GHN_PATH=str(tmp_path / "missing.safetensors"))
    try:
        assert main(["serve", "--port", "0", "--no-worker"]) == 1
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "GHN checkpoint not found" in err and "Traceback" not in err
    # The embedded default migrated its SQLite file before looking for the GHN.
    assert (tmp_path / "nas.db").is_file()


@pytest.mark.parametrize("command", [["serve", "--port", "0", "--no-worker"],
                                     ["worker", "--once"]])
def test_a_broken_ranking_head_stops_start_up_with_its_path(tmp_path, tiny_ghn_path, monkeypatch,
                                                             capsys, command) -> None:
    import shutil

    from nas_service.commands import main
    from nas_service.scoring.ranking_head import head_path_for
    from nas_service.settings import get_settings

    ghn = tmp_path / "ghn.safetensors"
    shutil.copyfile(tiny_ghn_path, ghn)
    head_path_for(ghn).write_text('{"format": "nas-ranking-head/1", "weights": [1]}')
    isolated_settings(monkeypatch, NAS_DATA_DIR=str(tmp_path / "state"), NAS_GHN_PATH=str(ghn),
                      NAS_DEVICE="cpu")
    try:
        assert main(command) == 1
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("nas-service: error:")]
    assert len(errors) == 1, err
    assert str(head_path_for(ghn)) in errors[0] and "no field 'bias'" in errors[0]
    assert "fix or remove" in errors[0]
