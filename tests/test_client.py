"""``nas_service.client.Client`` against a real ``nas-service serve`` process (uvicorn, SQLite in a
temporary folder, the tiny GHN, API keys on), plus retry behaviour on mocked transports."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

pytest.register_assert_rewrite("service_support", "remote_support")

import torch  # noqa: E402
from remote_support import RemoteService, free_port  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    requires_fashion_mnist,
    tiny_graph,
    tiny_graph_doc,
)
from torch import nn  # noqa: E402

from nas_service import ArchitectureGraph, from_module, to_module  # noqa: E402
from nas_service.client import (  # noqa: E402
    ApiError,
    Architecture,
    AuthenticationError,
    Candidate,
    Client,
    Conflict,
    Job,
    NotFound,
    ServiceUnavailable,
    ServiceUnreachable,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)
from nas_service.data import load_task  # noqa: E402
from nas_service.scoring import SCORE_NAME  # noqa: E402
from nas_service.scoring.evaluation import accuracy  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support", "remote_support")
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

MISSING_ID = "0" * 32


def _small_conv_net(channels: int = 6) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def _invalid_doc() -> dict:
    doc = tiny_graph_doc(4)
    for node in doc["nodes"]:
        if node["id"] == "conv":
            node["kernel_size"] = 0
    return doc


@pytest.fixture
def nas(remote_service: RemoteService):
    with Client(remote_service.url, remote_service.api_key, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def finished_job(remote_service: RemoteService) -> Job:
    """A small search (6 candidates of the cells space under SMALL_FLOPS), waited for."""
    with Client(remote_service.url, remote_service.api_key, timeout=60) as client:
        job = client.submit_search(space="cells", candidates=6, max_flops=SMALL_FLOPS, seed=5,
                                   idempotency_key="client-test-small-search")
        return client.wait(job, progress=False, poll=0.1, timeout=180)


# ---- predict ------------------------------------------------------------------------------------


def test_predict_a_graph_dict_and_again_from_the_cache(nas: Client) -> None:
    graph = tiny_graph(3)
    first = nas.predict(graph.to_dict())
    assert isinstance(first, Architecture)
    assert first.cached is False
    assert first.content_hash == graph.content_hash()
    assert first.task == "fashion-mnist" and first.name == "tiny-3"
    assert first.num_parameters == graph.num_parameters and first.flops == graph.flops
    assert first.score is not None and first.score_kind == SCORE_NAME
    assert 0.0 <= first.accuracy <= 1.0 and first.score.images == EVAL_IMAGES
    # The service's GHN has a ranking head: its estimate comes with the score.
    assert first.score.ranking is not None and first.score.ranking.name == "ranking-head"
    assert 0.0 <= first.estimated_trained_accuracy == first.score.ranking.value <= 1.0
    assert first.ghn_version == nas.hypernetworks()[0].version
    assert {"graph", "predict", "score", "store"} <= set(first.timings)
    assert first.checkpoint_url == f"/v1/architectures/{first.id}/checkpoint"
    assert first.created_at.tzinfo is not None

    again = nas.predict(json.dumps(graph.to_dict()))  # JSON text: the same architecture
    assert again.cached is True
    assert again.id == first.id and again.accuracy == first.accuracy
    read = nas.architecture(first.id)
    assert read.cached is None
    assert read.to_dict() | {"cached": None} == first.to_dict() | {"cached": None}


def test_predict_an_architecture_graph(nas: Client) -> None:
    graph = tiny_graph(5, name="graph-object")
    result = nas.predict(graph)
    assert result.content_hash == graph.content_hash()
    assert ArchitectureGraph.from_dict(result.graph).content_hash() == graph.content_hash()


def test_predict_a_torch_module_traced_on_the_task_input_shape(nas: Client) -> None:
    net = _small_conv_net()
    assert nas.task("Fashion_MNIST").input_shape == (1, 28, 28)
    result = nas.predict(net)  # no input_shape: the task's, from GET /v1/tasks
    assert result.content_hash == from_module(net, (1, 28, 28)).content_hash()
    assert result.num_parameters == sum(p.numel() for p in net.parameters())
    assert result.score is not None


def test_predict_space_and_seed(nas: Client) -> None:
    result = nas.predict({"space": "macro", "seed": 3})
    expected = get_space("macro").sample(3, (1, 28, 28), 10)
    assert result.content_hash == expected.content_hash()
    assert result.name == "macro/seed=3"


def test_predict_rejects_what_it_cannot_send(nas: Client) -> None:
    with pytest.raises(TypeError):
        nas.predict(42)
    with pytest.raises(ValueError, match="input_shape applies to a torch.nn.Module"):
        nas.predict(tiny_graph(4), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="unexpected keys"):
        nas.predict({"space": "cells", "seed": 1, "sede": 2})
    with pytest.raises(ValueError, match="knows no task"):
        nas.predict(_small_conv_net(), task="imagenet-22k")


# ---- errors -------------------------------------------------------------------------------------


def test_an_invalid_graph_is_a_validation_error_with_its_problem(nas: Client) -> None:
    with pytest.raises(ValidationError) as caught:
        nas.predict(_invalid_doc())
    e = caught.value
    assert isinstance(e, ApiError) and e.status == 422
    assert e.slug == "invalid-graph" and e.title == "Invalid architecture graph"
    assert e.instance == "/v1/architectures" and e.method == "POST"
    assert e.detail and "problem" in e.detail
    located = [err for err in e.errors if err.field == "kernel_size"]
    assert located and located[0].node == "conv"
    assert located[0].location.startswith("/body/graph/nodes/")
    assert "kernel_size" in str(e) and str(e).startswith("422 Invalid architecture graph")
    assert e.problem["errors"][0]["location"] == e.errors[0].location


def test_a_graph_for_another_task_is_a_task_mismatch(nas: Client) -> None:
    with pytest.raises(ValidationError) as caught:
        nas.predict(tiny_graph(4, input_shape=(3, 32, 32)))
    assert caught.value.slug == "task-mismatch"
    assert caught.value.errors[0].field == "shape"


def test_unknown_ids_are_not_found(nas: Client) -> None:
    for call in (lambda: nas.architecture(MISSING_ID), lambda: nas.job(MISSING_ID),
                 lambda: nas.candidate(MISSING_ID), lambda: nas.cancel(MISSING_ID),
                 lambda: nas.candidates("nope")):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.status == 404 and caught.value.slug == "not-found"
    with pytest.raises(NotFound, match="no architecture or candidate"):
        nas.download_checkpoint(MISSING_ID)
    with pytest.raises(NotFound, match="no candidate"):
        nas.download_checkpoint(MISSING_ID, kind="candidate")


def test_an_api_key_is_required(remote_service: RemoteService) -> None:
    for key, message in ((None, "a valid API key is required"),
                         ("wrong-key", "the API key is not valid")):
        with Client(remote_service.url, key) as client, \
                pytest.raises(Unauthorized, match=message) as caught:
            client.tasks()
        assert isinstance(caught.value, AuthenticationError)
        assert caught.value.status == 401 and caught.value.slug == "unauthorized"


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(nas: Client) -> None:
    first = nas.submit_search(space="cells", candidates=2, max_parameters=1,
                              idempotency_key="client-test-conflict")
    replay = nas.submit_search(space="cells", candidates=2, max_parameters=1,
                               idempotency_key="client-test-conflict")
    assert replay.id == first.id
    with pytest.raises(Conflict) as caught:
        nas.submit_search(space="cells", candidates=3, max_parameters=1,
                          idempotency_key="client-test-conflict")
    assert caught.value.extra["job_id"] == first.id


# ---- search jobs --------------------------------------------------------------------------------


def test_a_search_ranked_by_short_training_says_so(nas: Client) -> None:
    # max_parameters=1 rejects every candidate before any work: only the job's ranking matters.
    job = nas.submit_search(space="cells", candidates=2, max_parameters=1, short_training=2)
    assert job.ranking is not None
    assert (job.ranking["method"], job.ranking["steps"]) == ("short-training", 2)
    assert "after 2 steps of SGD" in job.ranking["target"]
    default = nas.submit_search(space="cells", candidates=2, max_parameters=1,
                                short_training=True)
    assert default.ranking is not None and default.ranking["steps"] == 8
    plain = nas.submit_search(space="cells", candidates=2, max_parameters=1)
    assert plain.ranking is not None and plain.ranking["method"] == "ghn"


def test_a_search_finishes_and_lists_its_candidates_best_first(
        nas: Client, finished_job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    job = finished_job
    assert job.status == "succeeded" and job.finished, job
    assert job.progress.done == job.progress.total == 6
    assert job.constraints.max_flops == SMALL_FLOPS and job.budget.candidates == 6

    every = nas.candidates(job)
    assert sorted(c.index for c in every) == list(range(6))
    scores = [c.score for c in every if c.status == "scored"]
    assert scores and scores == sorted(scores, reverse=True)
    assert every[0].id == job.best_candidate.id
    # The service's GHN has a ranking head: a score is its estimate of trained accuracy, and
    # the network's own accuracy with its predicted weights comes beside it.
    for c in every:
        score = nas.architecture(c.architecture_id).score
        assert c.score_kind == "estimated-trained-accuracy"
        assert c.estimated_trained_accuracy == c.score == score.ranking.value
        assert c.predicted_accuracy == score.value
    top = nas.candidates(job.id, top=3)
    assert [c.id for c in top] == [c.id for c in every[:3]]
    assert [c.index for c in nas.candidates(job, order="index")] == list(range(6))

    # Pages of two: the same list, assembled by following next_cursor.
    monkeypatch.setattr("nas_service.client.connection.PAGE_LIMIT", 2)
    assert [c.id for c in nas.candidates(job)] == [c.id for c in every]
    assert [c.id for c in nas.candidates(job, top=5)] == [c.id for c in every[:5]]

    assert nas.job(job.id) == job
    assert job.id in {j.id for j in nas.jobs(status="succeeded")}
    assert job.id not in {j.id for j in nas.jobs(status="queued")}


def test_wait_shows_progress(nas: Client, capsys: pytest.CaptureFixture) -> None:
    job = nas.submit_search(space="cells", candidates=3, max_flops=SMALL_FLOPS, seed=11)
    assert job.status in ("queued", "running")
    done = nas.wait(job.id, progress=True, poll=0.1, timeout=180)
    assert done.status == "succeeded" and done.progress.done == 3
    err = capsys.readouterr().err
    assert f"job {job.id[:8]}" in err and "3/3" in err and "succeeded" in err


def test_downloaded_checkpoint_runs_and_reproduces_the_reported_score(
        nas: Client, finished_job: Job, tmp_path: Path) -> None:
    best = finished_job.best_candidate
    assert best is not None and best.status == "scored"
    path = tmp_path / "best.safetensors"
    net = nas.download_checkpoint(best, path=path)
    assert not net.training

    saved = load_file(str(path))
    state = net.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # The same file by candidate id (tried as an architecture first) and by architecture id.
    for ref, kind in ((best.id, "auto"), (best.architecture_id, "architecture")):
        other = nas.download_checkpoint(ref, kind=kind).state_dict()
        assert all(torch.equal(other[k], saved[k]) for k in saved)

    checkpoint = nas.fetch_checkpoint(best)
    # The job ranked the candidate by the head's estimate; the file reproduces the accuracy.
    assert checkpoint.scores["ranking"]["value"] == best.score
    assert checkpoint.scores["value"] == best.predicted_accuracy
    assert checkpoint.metadata["ghn_version"] == nas.hypernetworks()[0].version
    images, labels = load_task("fashion-mnist").tensors("val")
    n = checkpoint.scores["images"]
    assert n == EVAL_IMAGES
    with torch.no_grad():
        assert accuracy(net, images[:n], labels[:n]) == checkpoint.scores["value"]
        # The rebuilt network is the graph's: same outputs as to_module + the file's tensors.
        reference = to_module(checkpoint.graph)
        reference.load_state_dict(saved)
        assert torch.equal(net(images[:8]), reference.eval()(images[:8]))


def test_a_rejected_candidate_has_no_checkpoint(nas: Client) -> None:
    job = nas.wait(nas.submit_search(space="cells", candidates=2, max_parameters=1, seed=1),
                   progress=False, poll=0.1, timeout=120)
    assert job.status == "succeeded"
    rejected = nas.candidates(job)[0]
    assert rejected.status == "rejected" and rejected.checkpoint_url is None
    assert rejected.score_kind is rejected.predicted_accuracy is None
    assert rejected.estimated_trained_accuracy is None
    with pytest.raises(NotFound) as caught:
        nas.download_checkpoint(rejected.id)
    assert caught.value.slug == "no-checkpoint"
    with pytest.raises(NotFound, match="has no weights"):
        nas.download_checkpoint(rejected)


def test_wait_times_out_and_cancel_stops_the_job(nas: Client) -> None:
    job = nas.submit_search(space="cells", candidates=5000, max_flops=SMALL_FLOPS, seed=9)
    with pytest.raises(WaitTimeout) as caught:
        nas.wait(job, progress=False, timeout=0)
    assert caught.value.job.id == job.id and not caught.value.job.finished
    cancelled = nas.cancel(job)
    assert cancelled.status == "cancelled" or cancelled.cancel_requested
    final = nas.wait(cancelled, progress=False, poll=0.1, timeout=60)
    assert final.status == "cancelled"
    assert final.progress.done < 5000


# ---- results -------------------------------------------------------------------------------------


def _candidate_json(**fields) -> dict:
    return {"id": "c", "job_id": "j", "index": 3, "status": "scored", "score": 0.9,
            "reason": None, "num_parameters": 100, "flops": 1000, "seconds": 0.1,
            "architecture_id": "a", "architecture_url": "/v1/architectures/a",
            "checkpoint_url": "/v1/candidates/c/checkpoint",
            "created_at": "2025-01-01T00:00:00Z", **fields}


def test_a_candidate_says_which_accuracy_its_score_is() -> None:
    estimate = Candidate.from_json(_candidate_json(score_kind="estimated-trained-accuracy",
                                                   predicted_accuracy=0.7))
    assert estimate.estimated_trained_accuracy == 0.9 and estimate.predicted_accuracy == 0.7
    assert estimate.to_dict()["score_kind"] == "estimated-trained-accuracy"
    predicted = Candidate.from_json(_candidate_json(score_kind="predicted-accuracy",
                                                    predicted_accuracy=0.9))
    assert predicted.estimated_trained_accuracy is None and predicted.predicted_accuracy == 0.9
    # A service that predates the fields: the candidate still reads, without them.
    older = Candidate.from_json(_candidate_json())
    assert older.score == 0.9 and older.score_kind is older.predicted_accuracy is None


# ---- retries ------------------------------------------------------------------------------------


def _tasks_body() -> list[dict]:
    return [{"name": "fashion-mnist", "input_shape": [1, 28, 28], "num_classes": 10,
             "class_names": [str(i) for i in range(10)], "validation_images": 5000,
             "scored": True, "data_available": True}]


def _mock_client(answers: list, **kwargs) -> tuple[Client, list[httpx.Request], list[float]]:
    """A client whose transport gives ``answers`` in turn (a response, or an exception to
    raise), and records requests and the delays it sleeps."""
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers[min(len(requests), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://nas.test", "k", transport=httpx.MockTransport(handle), **kwargs)
    delays: list[float] = []
    client._sleep = delays.append
    return client, requests, delays


def _problem(status: int, slug: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={"Content-Type": "application/problem+json", **headers},
                          json={"type": f"urn:nas-service:problem:{slug}", "title": slug,
                                "status": status, "detail": f"{slug} detail"})


def test_503_and_429_are_retried_with_backoff_honouring_retry_after() -> None:
    client, requests, delays = _mock_client(
        [_problem(503, "busy", **{"Retry-After": "2"}), _problem(429, "slow-down"),
         httpx.Response(200, json=_tasks_body())], backoff=0.25)
    assert client.tasks()[0].input_shape == (1, 28, 28)
    assert len(requests) == 3 and delays == [2.0, 0.5]
    assert requests[0].headers["Authorization"] == "Bearer k"


def test_retries_are_bounded_and_then_raise_the_problem() -> None:
    client, requests, delays = _mock_client([_problem(503, "busy")], retries=2, backoff=0.1,
                                            max_backoff=0.15)
    with pytest.raises(ServiceUnavailable, match="busy detail") as caught:
        client.predict(tiny_graph(4))
    assert caught.value.slug == "busy"
    assert len(requests) == 3 and delays == [0.1, 0.15]


def test_connection_errors_are_retried_but_not_read_timeouts_or_500s() -> None:
    refused = httpx.ConnectError("connection refused")
    client, requests, delays = _mock_client([refused, refused,
                                             httpx.Response(200, json=_tasks_body())], backoff=0.1)
    assert client.tasks()[0].name == "fashion-mnist"
    assert len(requests) == 3 and delays == [0.1, 0.2]

    client, requests, delays = _mock_client([httpx.ReadTimeout("slow")])
    with pytest.raises(ServiceUnreachable, match="larger timeout"):
        client.tasks()
    assert len(requests) == 1 and delays == []

    client, requests, delays = _mock_client([_problem(500, "internal-error")])
    with pytest.raises(ApiError) as caught:
        client.tasks()
    assert caught.value.status == 500 and len(requests) == 1 and delays == []


def test_a_non_problem_error_body_still_raises_with_its_text() -> None:
    client, _, _ = _mock_client([httpx.Response(502, text="<html>Bad gateway</html>")])
    with pytest.raises(ApiError, match="502 Bad Gateway: <html>Bad gateway") as caught:
        client.tasks()
    assert caught.value.type == "about:blank" and caught.value.errors == ()


class _TasksHandler(BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        type(self).requests += 1
        body = json.dumps(_tasks_body()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_connection_refused_then_the_server_comes_up() -> None:
    """A real TCP port with nothing listening: refused, backoff, then a server is there."""
    port = free_port()
    servers: list[HTTPServer] = []

    def start_later() -> None:
        time.sleep(0.5)
        server = HTTPServer(("127.0.0.1", port), _TasksHandler)
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=start_later, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with Client(f"http://127.0.0.1:{port}", retries=6, backoff=0.2) as client:
            tasks = client.tasks()
        assert tasks[0].input_shape == (1, 28, 28)
        assert time.monotonic() - started >= 0.4  # it did wait for the server
        assert _TasksHandler.requests == 1
    finally:
        deadline = time.monotonic() + 5
        while not servers and time.monotonic() < deadline:
            time.sleep(0.05)
        for server in servers:
            server.shutdown()
            server.server_close()
        thread.join(timeout=5)

    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as client, \
            pytest.raises(ServiceUnreachable, match="after 3 attempts"):
        client.tasks()
