"""Search jobs on the character task (``gcide-chars``, space ``charlm``) through the API and a
worker thread, on SQLite and PostgreSQL: candidates are scored in bits per character and the
best is the one with the lowest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support")

import torch  # noqa: E402
from char_task import write_toy_gcide  # noqa: E402
from service_support import TINY_GHN, assert_problem  # noqa: E402

from nas_service.ghn import GraphHyperNetwork  # noqa: E402
from nas_service.ghn.checkpoint import save_ghn  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

JOB = {"space": "charlm", "task": "gcide-chars", "strategy": "evolution", "seed": 3,
       "budget": {"candidates": 4}, "constraints": {"max_parameters": 20_000}}


@pytest.fixture(scope="module")
def char_ghn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("char-ghn") / "ghn.safetensors"
    save_ghn(GraphHyperNetwork(TINY_GHN), path, task="gcide-chars",
             training={"step": 0, "note": "untrained test GHN"})
    return path


@pytest.fixture(scope="module")
def char_scorer(char_ghn_path: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> ArchitectureScorer:
    scorer = ArchitectureScorer.load(char_ghn_path, device="cpu", eval_images=8)
    scorer.data_root = str(write_toy_gcide(tmp_path_factory.mktemp("gcide")))
    return scorer


def _wait(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/search-jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def test_a_character_search_records_bits_per_character_and_keeps_the_lowest(
        make_client, char_scorer, char_ghn_path) -> None:
    client = make_client(scorer=char_scorer, ghn_path=char_ghn_path, worker_in_process=True)
    r = client.post("/v1/search-jobs", json=JOB)
    assert r.status_code == 202, r.text
    done = _wait(client, r.json()["id"])
    assert done["status"] == "succeeded", done
    candidates = client.get(done["links"]["candidates"]).json()["items"]  # by score
    assert len(candidates) == 4
    bpc = [c["predicted_bpc"] for c in candidates]
    assert all(0 < b < 20 for b in bpc) and bpc == sorted(bpc)  # lowest bpc first
    for c in candidates:
        assert c["score_kind"] == "negative-predicted-bpc"
        assert c["score"] == -c["predicted_bpc"] and c["predicted_accuracy"] is None
        assert c["eval_images"] == 8
    best = done["best_candidate"]
    assert best["id"] == candidates[0]["id"] and best["predicted_bpc"] == min(bpc)
    architecture = client.get(best["architecture_url"]).json()
    assert architecture["task"] == "gcide-chars"
    assert architecture["score"]["name"] == "predicted-bpc"
    assert architecture["score"]["value"] == best["predicted_bpc"]
    assert architecture["graph"]["nodes"][-1]["task"] == "next_token"
    assert client.get(best["checkpoint_url"]).status_code == 200


def test_a_space_that_cannot_make_networks_for_the_task_is_a_422(make_client, char_scorer,
                                                                  char_ghn_path) -> None:
    client = make_client(scorer=char_scorer, ghn_path=char_ghn_path)
    body = assert_problem(client.post("/v1/search-jobs", json={**JOB, "space": "cells"}), 422)
    assert body["errors"][0]["field"] == "space" and "gcide-chars" in body["detail"]
