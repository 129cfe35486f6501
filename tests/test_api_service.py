"""Probes, metrics, the catalog (tasks, hypernetworks), API keys and start-up checks."""

from __future__ import annotations

import re

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    assert_problem,
    requires_fashion_mnist,
    service_settings,
    tiny_graph_doc,
)

from nas_service.api import create_app  # noqa: E402
from nas_service.db import SchemaError, migrate  # noqa: E402
from nas_service.ghn.checkpoint import CheckpointError  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

KEY = "s3cret-key-with-enough-entropy"


def test_healthz_and_readyz_answer_when_everything_is_up(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready",
                        "checks": {"database": "ok", "schema": "ok", "ghn": "ok"}}


def test_readyz_is_a_503_problem_naming_what_is_missing(client, monkeypatch) -> None:
    service = client.app.state.service
    monkeypatch.setattr(service, "scorer", None)

    def unreachable(_engine):
        raise OSError("connection refused")

    monkeypatch.setattr(migrate, "check_schema", unreachable)
    body = assert_problem(client.get("/readyz"), 503, "not-ready")
    assert body["checks"]["ghn"] == "not loaded"
    assert body["checks"]["database"].startswith("unreachable")
    # Without a GHN, scoring is unavailable rather than broken.
    assert_problem(client.post("/v1/architectures", json={"graph": tiny_graph_doc()}), 503,
                   "not-ready")


def test_metrics_are_prometheus_text_with_route_templates(client) -> None:
    client.get("/v1/search-jobs/unknown-id")
    client.get("/v1/search-jobs/another-unknown-id")
    client.post("/v1/search-jobs", json={"space": "cells", "budget": {"candidates": 1}})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    route = 'route="/v1/search-jobs/{job_id}"'
    count = re.search(r'nas_http_request_duration_seconds_count\{method="GET",'
                      + re.escape(route) + r',status="404"\} (\d+)', text)
    assert count and int(count.group(1)) == 2
    assert "unknown-id" not in text  # raw paths never become labels
    assert "nas_queue_depth 1" in text
    assert 'nas_search_jobs{status="queued"} 1' in text
    assert "nas_database_up 1" in text
    assert "# TYPE nas_http_request_duration_seconds histogram" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{.*\})? \S+", line), line


def test_tasks_and_hypernetworks_describe_what_is_loaded(client, scorer) -> None:
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()}
    assert tasks["fashion-mnist"]["scored"] is True
    assert tasks["fashion-mnist"]["input_shape"] == [1, 28, 28]
    assert tasks["fashion-mnist"]["data_available"] is True
    assert tasks["cifar10"]["scored"] is False
    (ghn,) = client.get("/v1/hypernetworks").json()
    assert ghn["task"] == "fashion-mnist"
    assert ghn["version"] == scorer.ghn_version
    assert ghn["device"] == "cpu"
    assert ghn["training"]["note"] == "untrained test GHN"
    assert ghn["config"]["hidden"] == 16
    assert ghn["score"]["name"] == "predicted-readout"


def test_without_keys_the_api_is_open(client) -> None:
    assert client.get("/v1/search-jobs").status_code == 200


def test_with_keys_every_v1_route_needs_one(make_client) -> None:
    client = make_client(api_keys=(KEY, "second-key"))
    for method, path in (("GET", "/v1/search-jobs"), ("GET", "/v1/tasks"),
                         ("GET", "/v1/hypernetworks"), ("GET", "/v1/architectures/x"),
                         ("POST", "/v1/architectures"), ("POST", "/v1/search-jobs"),
                         ("GET", "/v1/candidates/x/checkpoint")):
        r = client.request(method, path)
        body = assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert "API key" in body["detail"]
        wrong = client.request(method, path, headers={"Authorization": f"Bearer {KEY}x"})
        assert_problem(wrong, 401, "unauthorized")
    assert client.get("/v1/tasks", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/v1/tasks", headers={"X-API-Key": "second-key"}).status_code == 200
    assert_problem(client.get("/v1/tasks", headers={"Authorization": f"Basic {KEY}"}), 401)
    for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(open_path).status_code == 200, open_path


def test_the_openapi_document_lists_every_route(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/architectures", "/v1/architectures/{architecture_id}",
                 "/v1/architectures/{architecture_id}/checkpoint", "/v1/search-jobs",
                 "/v1/search-jobs/{job_id}", "/v1/search-jobs/{job_id}/candidates",
                 "/v1/search-jobs/{job_id}/cancel", "/v1/candidates/{candidate_id}",
                 "/v1/candidates/{candidate_id}/checkpoint", "/v1/tasks", "/v1/tasks/{name}",
                 "/v1/hypernetworks",
                 "/healthz", "/readyz", "/metrics"):
        assert path in paths, path


def test_the_app_refuses_to_start_on_an_unmigrated_database(empty_database_url, tmp_path,
                                                            tiny_ghn_path) -> None:
    settings = service_settings(empty_database_url, tmp_path, tiny_ghn_path)
    with pytest.raises(SchemaError, match="db upgrade"):
        create_app(settings)


def test_the_app_refuses_to_start_without_its_ghn(make_settings, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        create_app(make_settings(ghn_path=tmp_path / "missing.safetensors"))
