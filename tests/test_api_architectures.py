"""POST/GET /v1/architectures and checkpoint downloads, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load  # noqa: E402
from service_support import (  # noqa: E402
    EVAL_IMAGES,
    TINY_GHN,
    assert_problem,
    requires_fashion_mnist,
    tiny_graph,
    tiny_graph_doc,
)

from nas_service.data import load_task  # noqa: E402
from nas_service.graph import ArchitectureGraph, to_module  # noqa: E402
from nas_service.scoring import SCORE_NAME  # noqa: E402
from nas_service.scoring.evaluation import accuracy  # noqa: E402
from nas_service.search import CHECKPOINT_FORMAT  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]


def _minimal_doc(channels: int = 4) -> dict:
    """The document a person would write: defaults left out, keys in their own order."""
    return {"format": "nas-graph/1", "nodes": [
        {"id": "input", "op": "input", "shape": [1, 28, 28]},
        {"op": "conv2d", "id": "conv", "inputs": ["input"], "out_channels": channels,
         "kernel_size": 3, "stride": 2, "padding": 1},
        {"id": "bn", "op": "batch_norm", "inputs": ["conv"]},
        {"id": "act", "op": "relu", "inputs": ["bn"]},
        {"id": "pool", "op": "global_avg_pool", "inputs": ["act"]},
        {"id": "fc", "op": "linear", "inputs": ["pool"], "out_features": 10},
        {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]}


def test_posting_a_graph_scores_it_and_stores_the_result(client, scorer) -> None:
    graph = tiny_graph(4)
    r = client.post("/v1/architectures", json={"graph": graph.to_dict(),
                                               "task": "fashion-mnist"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/architectures/{body['id']}"
    assert body["content_hash"] == graph.content_hash()
    assert body["task"] == "fashion-mnist"
    assert body["num_parameters"] == graph.num_parameters
    assert body["flops"] == graph.flops
    assert 0.0 <= body["score"]["value"] <= 1.0
    assert body["score"]["name"] == SCORE_NAME == "predicted-readout"
    assert body["score"]["split"] == "val"
    assert body["score"]["images"] == 64
    assert body["ghn_version"] == scorer.ghn_version
    assert {"graph", "predict", "score"} <= body["timings"].keys()
    assert body["checkpoint"]["url"] == f"/v1/architectures/{body['id']}/checkpoint"
    assert len(body["checkpoint"]["id"]) == 64
    assert ArchitectureGraph.from_dict(body["graph"]) == graph

    again = client.get(body["checkpoint"]["url"].removesuffix("/checkpoint"))
    assert again.status_code == 200
    assert again.json() == body


def test_the_same_graph_again_returns_the_stored_result_without_scoring(client) -> None:
    first = client.post("/v1/architectures", json={"graph": _minimal_doc(6)})
    assert first.status_code == 201
    # Same architecture, spelled differently: every default written out, another name.
    second = client.post("/v1/architectures",
                         json={"graph": tiny_graph_doc(6, name="renamed"), "task": "fmnist"})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["score"] == first.json()["score"]
    metrics = client.get("/metrics").text
    assert 'nas_architectures_total{cached="true"} 1' in metrics
    assert 'nas_architectures_total{cached="false"} 1' in metrics


def test_another_ghn_scores_the_same_graph_anew(make_client, make_settings, tmp_path) -> None:
    """The cache key includes the GHN version: after another GHN checkpoint is deployed, the
    same graph and task is scored by it (a second row), not answered with the old GHN's score;
    each GHN then answers from its own row."""
    from fastapi.testclient import TestClient

    from nas_service.api import create_app
    from nas_service.ghn import GraphHyperNetwork
    from nas_service.ghn.checkpoint import save_ghn
    from nas_service.scoring import ArchitectureScorer

    request = {"graph": tiny_graph_doc(5)}
    old = make_client()
    first = old.post("/v1/architectures", json=request)
    assert first.status_code == 201, first.text

    torch.manual_seed(1)
    new_path = tmp_path / "ghn-2.safetensors"
    save_ghn(GraphHyperNetwork(TINY_GHN), new_path, task="fashion-mnist",
             training={"step": 0, "note": "another untrained test GHN"})
    new_scorer = ArchitectureScorer.load(new_path, device="cpu", eval_images=EVAL_IMAGES,
                                         recalibration_batches=1, recalibration_batch_size=32)
    assert new_scorer.ghn_version != first.json()["ghn_version"]
    with TestClient(create_app(make_settings(ghn_path=new_path), scorer=new_scorer)) as new:
        second = new.post("/v1/architectures", json=request)
        assert second.status_code == 201, second.text
        assert second.json()["id"] != first.json()["id"]
        assert second.json()["content_hash"] == first.json()["content_hash"]
        assert second.json()["ghn_version"] == new_scorer.ghn_version
        assert second.json()["checkpoint"]["id"] != first.json()["checkpoint"]["id"]
        cached = new.post("/v1/architectures", json=request)
        assert (cached.status_code, cached.json()["id"]) == (200, second.json()["id"])
        # The old GHN's result stays readable by its id.
        assert new.get(f"/v1/architectures/{first.json()['id']}").json() == first.json()
    again = old.post("/v1/architectures", json=request)
    assert (again.status_code, again.json()) == (200, first.json())


def test_other_scoring_settings_score_the_same_graph_anew(make_client, make_settings,
                                                           tiny_ghn_path) -> None:
    from fastapi.testclient import TestClient

    from nas_service.api import create_app
    from nas_service.scoring import ArchitectureScorer

    request = {"graph": tiny_graph_doc(6)}
    first = make_client().post("/v1/architectures", json=request)
    assert first.status_code == 201, first.text
    # Same GHN, fewer validation images: another score, so not the cached one.
    fewer = ArchitectureScorer.load(tiny_ghn_path, device="cpu", eval_images=EVAL_IMAGES // 2,
                                    recalibration_batches=1, recalibration_batch_size=32)
    assert fewer.ghn_version != first.json()["ghn_version"]
    settings = make_settings(eval_images=EVAL_IMAGES // 2)
    with TestClient(create_app(settings, scorer=fewer)) as other:
        second = other.post("/v1/architectures", json=request)
        assert second.status_code == 201, second.text
        assert second.json()["score"]["images"] == EVAL_IMAGES // 2
        assert first.json()["score"]["images"] == EVAL_IMAGES
        assert second.json()["id"] != first.json()["id"]


def test_space_and_seed_score_the_sampled_architecture(client) -> None:
    r = client.post("/v1/architectures", json={"space": "macro", "seed": 3})
    assert r.status_code == 201, r.text
    expected = get_space("macro").sample(3, (1, 28, 28), 10)
    assert r.json()["content_hash"] == expected.content_hash()
    assert r.json()["name"] == "macro/seed=3"


def test_unknown_architecture_is_a_404_problem(client) -> None:
    for path in ("/v1/architectures/nope", "/v1/architectures/nope/checkpoint",
                 "/v1/architectures/" + "0" * 32):
        assert_problem(client.get(path), 404, "not-found")


def test_checkpoint_rebuilds_the_network_and_reproduces_the_reported_accuracy(
        client, tmp_path: Path) -> None:
    body = client.post("/v1/architectures", json={"graph": tiny_graph_doc(5)}).json()
    r = client.get(body["checkpoint"]["url"])
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{body["checkpoint"]["id"]}"'
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == body["checkpoint"]["size_bytes"] == len(r.content)

    tensors = load(r.content)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(r.content)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == CHECKPOINT_FORMAT
    assert json.loads(metadata["scores"])["value"] == body["score"]["value"]
    assert metadata["ghn_version"] == body["ghn_version"]

    graph = ArchitectureGraph.from_json(metadata["graph"])
    assert graph.content_hash() == metadata["content_hash"] == body["content_hash"]
    net = to_module(graph)
    assert tensors.keys() == net.state_dict().keys()
    assert "bn.running_mean" in tensors and "bn.running_var" in tensors
    net.load_state_dict(tensors, strict=True)
    x, y = load_task("fashion-mnist").tensors("val")
    n = body["score"]["images"]
    with torch.no_grad():
        assert accuracy(net.eval(), x[:n], y[:n]) == body["score"]["value"]


def test_checkpoint_download_honours_if_none_match(client) -> None:
    body = client.post("/v1/architectures", json={"graph": tiny_graph_doc(7)}).json()
    url, etag = body["checkpoint"]["url"], f'"{body["checkpoint"]["id"]}"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = client.get(url, headers={"If-None-Match": header})
        assert r.status_code == 304, header
        assert r.headers["etag"] == etag
        assert r.content == b""
    r = client.get(url, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200 and r.content


def test_a_graph_that_does_not_fit_the_task_names_the_node(client) -> None:
    wrong_input = tiny_graph_doc(4, input_shape=(3, 32, 32))
    body = assert_problem(client.post("/v1/architectures", json={"graph": wrong_input}), 422,
                          "task-mismatch")
    assert body["errors"] == [{
        "location": "/body/graph/nodes/0/shape", "node": "input", "field": "shape",
        "message": body["errors"][0]["message"]}]
    assert "[1, 28, 28]" in body["errors"][0]["message"]

    wrong_classes = tiny_graph_doc(4, num_classes=5)
    body = assert_problem(client.post("/v1/architectures", json={"graph": wrong_classes}), 422,
                          "task-mismatch")
    (error,) = body["errors"]
    assert (error["node"], error["field"]) == ("output", "num_classes")
    assert error["location"] == "/body/graph/nodes/6/num_classes"


def test_an_invalid_graph_lists_every_problem_with_its_location(client) -> None:
    doc = _minimal_doc()
    doc["nodes"][1]["kernel_size"] = 0
    doc["nodes"][3]["op"] = "warp_drive"
    body = assert_problem(client.post("/v1/architectures", json={"graph": doc}), 422,
                          "invalid-graph")
    located = {(e["node"], e["location"]) for e in body["errors"]}
    assert ("conv", "/body/graph/nodes/1/kernel_size") in located
    assert any(node == "act" for node, _ in located)
    assert all(e["message"] for e in body["errors"])


def test_a_graph_with_opaque_nodes_is_not_scored_and_each_is_named(client) -> None:
    doc = _minimal_doc()
    doc["nodes"][3] = {"id": "act", "op": "opaque", "inputs": ["bn"], "shape": [4, 14, 14],
                       "parameters": {"gamma": [4]}, "label": "F.softmax in block (Block)"}
    body = assert_problem(client.post("/v1/architectures", json={"graph": doc}), 422,
                          "opaque-graph")
    assert body["errors"] == [{"location": "/body/graph/nodes/3/op", "node": "act",
                               "field": "op",
                               "message": "opaque node (F.softmax in block (Block))"}]


def test_tasks_and_sources_are_checked(client) -> None:
    body = assert_problem(client.post("/v1/architectures", json={
        "graph": tiny_graph_doc(), "task": "imagenet-22k"}), 422, "invalid-request")
    assert body["errors"][0]["location"] == "/body/task"

    # A known task the loaded GHN was not trained for.
    body = assert_problem(client.post("/v1/architectures", json={
        "graph": tiny_graph_doc(3, input_shape=(3, 32, 32)), "task": "cifar10"}), 422,
        "task-not-supported")
    assert body["errors"][0]["location"] == "/body/task"

    for payload in ({"graph": tiny_graph_doc(), "space": "cells", "seed": 1},
                    {"space": "cells"}, {}, {"space": "nope", "seed": 1}):
        assert_problem(client.post("/v1/architectures", json=payload), 422, "invalid-request")
