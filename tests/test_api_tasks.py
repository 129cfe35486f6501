"""POST/GET /v1/tasks: registering a dataset by upload, its adaptation job, and scoring on the
registered task afterwards; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load

pytest.register_assert_rewrite("service_support")

from data_files import idx_bytes  # noqa: E402
from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    assert_problem,
    requires_fashion_mnist,
)

from nas_service.data import clear_cache, forget_task  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

TINY_ADAPTATION = dict(adaptation_steps=3, adaptation_probe_architectures=2,
                       adaptation_batch_graphs=1, adaptation_batch_images=16,
                       adaptation_checkpoint_every=1, adaptation_max_flops=SMALL_FLOPS // 4,
                       min_task_images_per_class=5)


def npz_upload(n: int = 90, classes: int = 3, side: int = 12, seed: int = 0,
               **arrays: np.ndarray) -> bytes:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    # Class-dependent brightness: a task a network can learn a little.
    x = (rng.integers(0, 100, (n, side, side)) + 50 * y[:, None, None]).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **({"x": x, "y": y} | arrays))
    return buf.getvalue()


@pytest.fixture
def task_name() -> Any:
    name = f"up-{uuid.uuid4().hex[:8]}"
    yield name
    forget_task(name)
    clear_cache()


def post_task(client: Any, name: str, files: list[tuple[str, bytes]],
              **fields: str) -> Any:
    return client.post("/v1/tasks", data={"name": name, **fields},
                       files=[("files", (filename, data)) for filename, data in files])


def test_an_upload_is_stored_listed_and_queued_for_adaptation(make_client, task_name) -> None:
    client = make_client(**TINY_ADAPTATION)
    r = post_task(client, task_name, [("mine.npz", npz_upload())])
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/tasks/{task_name}"
    assert body["registered"] and not body["scored"] and body["data_available"]
    assert (body["input_shape"], body["num_classes"], body["format"]) == ([1, 12, 12], 3, "npz")
    assert (body["train_images"], body["test_images"]) == (75, 15)
    assert body["adaptation"]["status"] == "queued"
    assert body["adaptation"]["progress"] == {"done": 0, "total": 3, "fraction": 0.0}
    listed = {t["name"]: t for t in client.get("/v1/tasks").json()}
    assert listed[task_name]["registered"] and not listed["fashion-mnist"]["registered"]
    assert client.get(f"/v1/tasks/{task_name}").json()["adaptation"]["status"] == "queued"
    assert client.get("/v1/tasks/fashion-mnist").json()["scored"]
    assert_problem(client.get("/v1/tasks/nothing-here"), 404, "not-found")
    # The name is taken; an architecture on the task waits for its adaptation.
    assert_problem(post_task(client, task_name, [("mine.npz", npz_upload())]), 409,
                   "task-exists")
    r = client.post("/v1/architectures", json={"space": "cells", "seed": 1, "task": task_name})
    assert_problem(r, 422, "task-not-supported")


def test_idx_uploads_and_the_class_count(make_client, task_name) -> None:
    client = make_client(**TINY_ADAPTATION)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60, 10, 10), dtype=np.uint8)
    y = (np.arange(60) % 4).astype(np.uint8)
    r = post_task(client, task_name, [("train-images-idx3-ubyte", idx_bytes(x)),
                                      ("train-labels-idx1-ubyte", idx_bytes(y))],
                  num_classes="5")
    body = assert_problem(r, 422, "invalid-dataset")
    assert "class 4 has 0 training images" in body["detail"]
    r = post_task(client, task_name, [("train-images-idx3-ubyte", idx_bytes(x)),
                                      ("train-labels-idx1-ubyte", idx_bytes(y))])
    assert r.status_code == 201, r.text
    assert r.json()["num_classes"] == 4 and r.json()["format"] == "idx"


def test_bad_uploads_are_problems_that_name_the_file(make_client, task_name) -> None:
    client = make_client(**TINY_ADAPTATION, max_upload_bytes=200_000)
    labels = np.arange(90) % 3
    labels[5] = 7
    body = assert_problem(post_task(client, task_name, [("bad.npz", npz_upload(y=labels))],
                                    num_classes="3"), 422, "invalid-dataset")
    assert body["errors"][0]["location"] == "/body/files/bad.npz"
    assert "label 7 at index 5" in body["errors"][0]["message"]
    nan = np.full((90, 12, 12), np.nan, np.float32)
    body = assert_problem(post_task(client, task_name, [("nan.npz", npz_upload(x=nan))]),
                          422, "invalid-dataset")
    assert "NaN" in body["detail"]
    data = npz_upload()
    assert_problem(post_task(client, task_name, [("cut.npz", data[:len(data) // 2])]), 422,
                   "invalid-dataset")
    assert_problem(post_task(client, "Bad Name", [("a.npz", data)]), 422, "invalid-request")
    assert_problem(post_task(client, "fashion-mnist", [("a.npz", data)]), 422,
                   "invalid-request")
    no_files = client.post("/v1/tasks", files={"name": (None, task_name)})
    assert "no file" in assert_problem(no_files, 422, "invalid-request")["detail"]
    assert_problem(client.post("/v1/tasks", json={"name": task_name}), 415)
    assert_problem(client.post("/v1/tasks", content=b"--x\r\nno headers",
                               headers={"content-type": "multipart/form-data; boundary=x"}),
                   400, "malformed-body")
    big = npz_upload(n=3000, side=32)
    assert_problem(post_task(client, task_name, [("big.npz", big)]), 413, "body-too-large")
    assert client.get(f"/v1/tasks/{task_name}").status_code == 404  # nothing was stored


def test_a_registered_task_is_adapted_then_scored_and_searched(
        make_client, make_settings, tiny_ghn_path: Path, task_name) -> None:
    settings = make_settings(**TINY_ADAPTATION)
    scorer = ArchitectureScorer.load(tiny_ghn_path, device="cpu", eval_images=EVAL_IMAGES,
                                     recalibration_batches=1, recalibration_batch_size=32,
                                     adapted_dir=settings.adapted_ghn_dir,
                                     tasks_dir=settings.tasks_dir)
    # Misses are scored in a scoring process, as by default: it must serve the adapted GHN too.
    client = make_client(scorer=scorer, worker_in_process=True, scoring_processes=1,
                         **TINY_ADAPTATION)
    before = client.post("/v1/architectures", json={"space": "cells", "seed": 3})
    assert before.status_code == 201, before.text
    r = post_task(client, task_name, [("mine.npz", npz_upload())])
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 240
    while True:
        task = client.get(f"/v1/tasks/{task_name}").json()
        if task["adaptation"]["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    adaptation = task["adaptation"]
    assert adaptation["status"] == "succeeded", adaptation
    assert adaptation["progress"] == {"done": 3, "total": 3, "fraction": 1.0}
    # The default adapts only the task's embedding: nothing of the earlier task moved.
    assert adaptation["result"]["steps"] == 3 and adaptation["result"]["drift"] == {
        "fashion-mnist": 0.0}
    assert task["scored"]
    served = settings.adapted_ghn_dir
    assert (served / "served.json").is_file()
    assert list((served / "tasks").glob(f"{task_name}-*.safetensors"))
    hypernetworks = client.get("/v1/hypernetworks").json()
    assert hypernetworks[0]["tasks"] == ["fashion-mnist", task_name]

    r = client.post("/v1/architectures", json={"space": "cells", "seed": 1, "task": task_name})
    assert r.status_code == 201, r.text
    assert r.json()["task"] == task_name and 0.0 <= r.json()["score"]["value"] <= 1.0
    assert r.json()["graph"]["nodes"][0]["shape"] == [1, 12, 12]
    # The earlier task still scores, with the adapted GHN's version (not served from the cache
    # of the GHN before adaptation), exactly as before.
    after = client.post("/v1/architectures", json={"space": "cells", "seed": 3})
    assert after.status_code == 201, after.text
    assert after.json()["ghn_version"] != before.json()["ghn_version"]
    assert after.json()["score"]["value"] == before.json()["score"]["value"]
    weights = [load(client.get(r.json()["checkpoint"]["url"]).content) for r in (before, after)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    job = client.post("/v1/search-jobs", json={"space": "cells", "task": task_name, "seed": 0,
                                               "budget": {"candidates": 2}})
    assert job.status_code == 202, job.text
    url = job.headers["location"]
    while client.get(url).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline + 60
        time.sleep(0.2)
    assert client.get(url).json()["status"] == "succeeded"


def test_the_client_and_the_command_line(make_client, task_name, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    from nas_service.client import Client, Conflict, ValidationError, WaitTimeout
    from nas_service.commands import main, remote

    test_client = make_client(**TINY_ADAPTATION)

    import httpx

    def forward(request: httpx.Request) -> httpx.Response:  # to the in-process app
        answer = test_client.request(request.method, request.url.raw_path.decode(),
                                     headers=dict(request.headers), content=request.read())
        return httpx.Response(answer.status_code, headers=answer.headers,
                              content=answer.content)

    def client(args: Any) -> Client:  # the command line's client, talking to the test app
        return Client("http://testserver", transport=httpx.MockTransport(forward))

    monkeypatch.setattr(remote, "_client", client)
    data = tmp_path / "mine.npz"
    data.write_bytes(npz_upload())
    assert main(["tasks", "add", task_name, str(data), "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert f"task          {task_name}" in out and "adaptation    queued, step 0 of 3" in out
    assert "npz: 75 training and 15 test images" in out
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert task_name in out and "queued 0/3" in out and "built in" in out
    assert main(["tasks", "show", task_name, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["registered"] and shown["adaptation"]["status"] == "queued"
    assert main(["tasks", "add", task_name, str(data), "--no-wait"]) == 1
    assert "409" in capsys.readouterr().err
    assert main(["tasks", "show", "nothing-here"]) == 1

    with client(None) as nas:
        task = nas.registered_task(task_name)
        assert task.adaptation is not None and task.adaptation.progress.total == 3
        with pytest.raises(Conflict):
            nas.add_task(task_name, [data])
        with pytest.raises(ValidationError) as info:
            nas.add_task(task_name + "-b", [("bad.npz", b"not a zip")])
        assert info.value.errors[0].location == "/body/files/bad.npz"
        nas._sleep = lambda seconds: None
        with pytest.raises(WaitTimeout):
            nas.wait_for_task(task_name, progress=False, timeout=0.01)
