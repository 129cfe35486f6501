"""/v1/search-jobs and /v1/candidates through the API, with a real worker where a job must run;
on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    assert_problem,
    requires_fashion_mnist,
    tiny_graph_doc,
    wait_until,
)
from sqlalchemy import Engine, event  # noqa: E402

from nas_service.db import catalog, make_engine, queue, write_session  # noqa: E402
from nas_service.spaces import family_of  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

JOB = {"space": "cells", "task": "fashion-mnist", "strategy": "random", "seed": 11,
       "budget": {"candidates": 4}, "constraints": {"max_flops": SMALL_FLOPS}}
FINAL = ("succeeded", "failed", "cancelled")


def _wait(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/search-jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def test_creating_a_job_queues_it(client) -> None:
    r = client.post("/v1/search-jobs", json=JOB)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/search-jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["progress"] == {"done": 0, "total": 4, "fraction": 0.0}
    assert job["budget"] == {"candidates": 4, "seconds": None}
    assert job["constraints"] == {"max_parameters": None, "max_flops": SMALL_FLOPS}
    assert job["best_candidate"] is None and job["rate"] is None
    assert client.get(r.headers["location"]).json()["id"] == job["id"]


def test_an_idempotent_replay_returns_the_same_job(client) -> None:
    headers = {"Idempotency-Key": "order-66"}
    first = client.post("/v1/search-jobs", json=JOB, headers=headers)
    # The same request spelled differently (defaults written out, keys reordered) is a replay.
    same = {"budget": {"seconds": None, "candidates": 4}, **{k: v for k, v in JOB.items()
                                                              if k != "budget"}}
    replay = client.post("/v1/search-jobs", json=same, headers=headers)
    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/search-jobs").json()["items"]) == 1
    other = client.post("/v1/search-jobs", json=JOB, headers={"Idempotency-Key": "order-67"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_listing_pages_through_every_job_once_newest_first(client) -> None:
    ids = [client.post("/v1/search-jobs", json={**JOB, "seed": i}).json()["id"]
           for i in range(5)]
    seen, url, pages = [], "/v1/search-jobs?limit=2", 0
    while url:
        page = client.get(url).json()
        seen += [job["id"] for job in page["items"]]
        url, pages = page["next"], pages + 1
    assert seen == ids[::-1]
    assert pages == 3


def test_listing_filters_by_status(client) -> None:
    a = client.post("/v1/search-jobs", json=JOB).json()["id"]
    b = client.post("/v1/search-jobs", json={**JOB, "seed": 2}).json()["id"]
    assert client.post(f"/v1/search-jobs/{a}/cancel").json()["status"] == "cancelled"
    queued = client.get("/v1/search-jobs", params={"status": "queued"}).json()["items"]
    cancelled = client.get("/v1/search-jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in queued] == [b]
    assert [j["id"] for j in cancelled] == [a]


def test_a_task_without_a_hypernetwork_is_refused(client) -> None:
    body = assert_problem(client.post("/v1/search-jobs", json={**JOB, "task": "cifar10"}), 422,
                          "task-not-supported")
    assert body["errors"][0]["location"] == "/body/task"
    assert_problem(client.post("/v1/search-jobs", json={**JOB, "budget": {"candidates": 10**5}}),
                   422, "invalid-request")


def test_a_job_runs_to_completion_and_its_best_candidate_downloads(make_client) -> None:
    client = make_client(worker_in_process=True)
    job = client.post("/v1/search-jobs", json={**JOB, "strategy": "evolution"}).json()
    done = _wait(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"done": 4, "total": 4, "fraction": 1.0}
    assert done["rate"] > 0 and done["timings"]["running_seconds"] > 0
    assert done["attempts"] == 1 and done["error"] is None

    by_index = client.get(done["links"]["candidates"], params={"order_by": "index"}).json()
    assert [c["index"] for c in by_index["items"]] == [0, 1, 2, 3]
    by_score = client.get(done["links"]["candidates"]).json()["items"]
    scores = [c["score"] for c in by_score]
    assert scores == sorted(scores, reverse=True)
    best = done["best_candidate"]
    assert best["id"] == by_score[0]["id"] and best["score"] == max(scores)

    candidate = client.get(f"/v1/candidates/{best['id']}").json()
    assert candidate == best
    architecture = client.get(candidate["architecture_url"]).json()
    assert architecture["score"]["value"] == best["score"]
    # No ranking head: the score is the accuracy with the predicted weights, and says so.
    assert architecture["score"]["ranking"] is None
    for c in by_score:
        assert c["score_kind"] == "predicted-accuracy"
        assert c["predicted_accuracy"] == c["score"]
    r = client.get(candidate["checkpoint_url"])
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{architecture["checkpoint"]["id"]}"'
    assert client.get(candidate["checkpoint_url"],
                      headers={"If-None-Match": r.headers["etag"]}).status_code == 304

    metrics = client.get("/metrics").text
    assert 'nas_candidates_recorded_total{status="scored"} 4' in metrics
    assert 'nas_worker_jobs_total{outcome="succeeded"} 1' in metrics
    assert 'nas_worker_heartbeats_total{held="true"}' in metrics


@pytest.mark.parametrize(("fidelity", "location"), [
    ({"rungs": [16, 8, EVAL_IMAGES]}, "/body/fidelity/rungs/1"),
    ({"rungs": [16, EVAL_IMAGES // 2]}, "/body/fidelity/rungs/1"),  # not the full budget
    ({"rungs": [16, EVAL_IMAGES], "eta": 4, "bracket": 3}, "/body/fidelity/bracket"),
    ({"rungs": [16, EVAL_IMAGES], "eta": 1}, "/body/fidelity/eta"),
    ({"rungs": [0, EVAL_IMAGES]}, "/body/fidelity/rungs/0"),
    ({"rungs": [16, EVAL_IMAGES], "eta": "4"}, "/body/fidelity/eta"),
    ({"rungs": [16, EVAL_IMAGES], "halving": True}, "/body/fidelity/halving"),
])
def test_rungs_that_cannot_run_are_a_422_naming_where(client, fidelity, location) -> None:
    r = client.post("/v1/search-jobs", json={**JOB, "fidelity": fidelity})
    problem = assert_problem(r, 422)
    assert location in [e["location"] for e in problem["errors"]], problem
    assert client.get("/v1/search-jobs").json()["items"] == []


def test_a_worker_stuck_in_scoring_gives_its_job_back_and_readyz_says_so(
        make_client, monkeypatch) -> None:
    import threading

    from nas_service.scoring import ArchitectureScorer

    release = threading.Event()
    original = ArchitectureScorer._evaluate

    def never_returns(self, *args, **kwargs):  # until the test ends: a kernel that spins
        release.wait(120)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ArchitectureScorer, "_evaluate", never_returns)
    client = make_client(worker_in_process=True, scoring_timeout_seconds=2,
                         heartbeat_seconds=0.2, lease_seconds=5)
    try:
        job = client.post("/v1/search-jobs", json=JOB).json()
        wait_until(lambda: client.get("/readyz").status_code != 200,
                   "the worker to report itself stuck")
        ready = client.get("/readyz")
        assert_problem(ready, 503, "not-ready")
        assert ready.json()["checks"]["worker"] == "stuck"
        job = client.get(f"/v1/search-jobs/{job['id']}").json()
        assert job["status"] == "queued" and job["attempts"] == 1  # given back for a retry
        failed = client.get(job["links"]["candidates"], params={"order_by": "index"}).json()
        assert failed["items"] and all(c["status"] == "failed" and "did not finish in" in
                                       c["reason"] for c in failed["items"])
    finally:
        release.set()


def test_a_job_with_rungs_shows_each_scores_fidelity_and_its_best_is_a_full_score(
        make_client) -> None:
    client = make_client(worker_in_process=True)
    r = client.post("/v1/search-jobs", json={**JOB, "budget": {"candidates": 6},
                                             "fidelity": {"rungs": [16, EVAL_IMAGES],
                                                          "eta": 3}})
    assert r.status_code == 202, r.text
    assert r.json()["fidelity"] == {"rungs": [16, EVAL_IMAGES], "eta": 3, "bracket": 9}
    done = _wait(client, r.json()["id"])
    assert done["status"] == "succeeded", done
    items = client.get(done["links"]["candidates"], params={"order_by": "index"}).json()["items"]
    scored = [c for c in items if c["status"] == "scored"]
    full = [c for c in scored if c["full_fidelity"]]
    assert len(full) == 2  # ceil(6 / 3) of the one bracket
    for c in scored:
        assert c["rung_scores"][0]["rung"] == 0 and c["rung_scores"][0]["images"] == 16
        if c["full_fidelity"]:
            assert (c["rung"], c["eval_images"]) == (1, EVAL_IMAGES)
            assert [r["images"] for r in c["rung_scores"]] == [16, EVAL_IMAGES]
            architecture = client.get(c["architecture_url"]).json()
            assert architecture["score"]["images"] == EVAL_IMAGES
        else:
            assert (c["rung"], c["eval_images"], len(c["rung_scores"])) == (0, 16, 1)
    best = done["best_candidate"]
    assert best["full_fidelity"] and best["score"] == max(c["score"] for c in full)
    assert client.get(f"/v1/candidates/{best['id']}").json() == best
    metrics = client.get("/metrics").text
    assert 'nas_candidates_recorded_total{status="scored"} 6' in metrics
    assert 'nas_candidates_promoted_total{rung="1"} 2' in metrics


def test_a_job_over_some_families_records_the_view_and_samples_only_them(make_client) -> None:
    client = make_client(worker_in_process=True)
    r = client.post("/v1/search-jobs", json={**JOB, "space": "families[vgg, plain]",
                                             "strategy": "evolution"})
    assert r.status_code == 202, r.text
    assert r.json()["space"] == "families[plain,vgg]"  # one spelling per view
    done = _wait(client, r.json()["id"])
    assert done["status"] == "succeeded", done
    for candidate in client.get(done["links"]["candidates"]).json()["items"]:
        name = client.get(candidate["architecture_url"]).json()["name"]
        assert family_of(name) in ("plain", "vgg"), name
    body = assert_problem(client.post("/v1/search-jobs", json={
        **JOB, "space": "families[resnet,transformer]"}), 422, "invalid-request")
    assert "'transformer'" in str(body) and "known families" in str(body)


def test_candidates_page_by_score_and_a_rejected_one_has_no_checkpoint(client,
                                                                        database_url) -> None:
    job = client.post("/v1/search-jobs", json=JOB).json()
    engine = make_engine(database_url)
    try:
        claimed = queue.claim_next_job(engine, "test-worker", 30)
        assert claimed.job_id == job["id"]
        for index, score in ((0, 0.5), (1, None), (2, 0.7), (3, 0.5)):
            queue.record_candidate(engine, claimed.job_id, claimed.lease_token, index,
                                   status="scored" if score is not None else "rejected",
                                   score=score, reason=None if score else "over max_flops")
    finally:
        engine.dispose()
    seen, url = [], f"/v1/search-jobs/{job['id']}/candidates?limit=1&order_by=score"
    while url:
        page = client.get(url).json()
        seen += page["items"]
        url = page["next"]
    assert [c["index"] for c in seen] == [2, 0, 3, 1]
    rejected = seen[-1]
    assert rejected["status"] == "rejected" and rejected["reason"] == "over max_flops"
    assert rejected["checkpoint_url"] is None
    body = assert_problem(client.get(f"/v1/candidates/{rejected['id']}/checkpoint"), 404,
                          "no-checkpoint")
    assert "over max_flops" in body["detail"]
    running = client.get(f"/v1/search-jobs/{job['id']}").json()
    assert running["status"] == "running"
    assert running["best_candidate"]["index"] == 2
    assert running["progress"]["done"] == 4


def test_cancelling_a_running_job_is_accepted_and_seen_by_its_worker(client,
                                                                      database_url) -> None:
    job = client.post("/v1/search-jobs", json=JOB).json()
    engine = make_engine(database_url)
    try:
        claimed = queue.claim_next_job(engine, "test-worker", 30)
        r = client.post(f"/v1/search-jobs/{job['id']}/cancel")
        assert r.status_code == 202
        assert r.json()["cancel_requested"] is True and r.json()["status"] == "running"
        assert queue.heartbeat(engine, claimed.job_id, claimed.lease_token, 30).cancel_requested
        queue.finish_job(engine, claimed.job_id, claimed.lease_token, "cancelled")
    finally:
        engine.dispose()
    again = client.post(f"/v1/search-jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_job_with_a_ranking_head_labels_its_scores_as_estimates(
        make_client, ranked_scorer, ranked_tiny_ghn_path) -> None:
    client = make_client(worker_in_process=True, scorer=ranked_scorer,
                         ghn_path=ranked_tiny_ghn_path)
    job = client.post("/v1/search-jobs", json={**JOB, "budget": {"candidates": 3}}).json()
    done = _wait(client, job["id"])
    assert done["status"] == "succeeded", done
    candidates = client.get(done["links"]["candidates"]).json()["items"]
    assert len(candidates) == 3
    for c in candidates:
        score = client.get(c["architecture_url"]).json()["score"]
        assert c["score_kind"] == "estimated-trained-accuracy"
        assert c["score"] == score["ranking"]["value"]
        assert c["predicted_accuracy"] == score["value"]
    best = done["best_candidate"]
    assert best == candidates[0] == client.get(f"/v1/candidates/{best['id']}").json()
    listed = client.get("/v1/search-jobs").json()["items"]
    assert [j["best_candidate"] for j in listed] == [best]


_RANKED = {"value": 0.55, "name": "predicted-recalibrated", "split": "val", "images": 64,
           "ranking": {"value": 0.81, "name": "ranking-head", "kendall_tau": 0.5,
                       "target": "test accuracy after 5 epochs"}}
_UNRANKED = {"value": 0.62, "name": "predicted-recalibrated", "split": "val", "images": 64}


def _statements_reading_architectures(statements: list[str]) -> int:
    return sum("architectures" in s.lower() for s in statements)


def test_a_page_of_candidates_reads_its_architectures_scores_in_one_query(
        client, database_url) -> None:
    job = client.post("/v1/search-jobs", json=JOB).json()
    engine = make_engine(database_url)
    try:
        with write_session(engine) as session:
            ranked, unranked = (catalog.save_architecture(
                session, content_hash=f"{i:064x}", task="fashion-mnist", ghn_version="test",
                graph=tiny_graph_doc(4 + i), num_parameters=100 + i, flops=1000 + i,
                scores=scores)[0].id for i, scores in enumerate((_RANKED, _UNRANKED)))
        claimed = queue.claim_next_job(engine, "test-worker", 30)
        for index, architecture, score in ((0, ranked, 0.81), (1, unranked, 0.62),
                                           (2, ranked, 0.81), (3, None, None)):
            queue.record_candidate(engine, claimed.job_id, claimed.lease_token, index,
                                   status="scored" if score else "rejected", score=score,
                                   architecture_id=architecture,
                                   reason=None if score else "over max_flops")
    finally:
        engine.dispose()

    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        page = client.get(f"/v1/search-jobs/{job['id']}/candidates?order_by=index").json()
        assert _statements_reading_architectures(statements) == 1
        statements.clear()
        listed = client.get("/v1/search-jobs").json()["items"]
        assert _statements_reading_architectures(statements) == 1
    finally:
        event.remove(Engine, "before_cursor_execute", record)

    fields = [(c["score"], c["score_kind"], c["predicted_accuracy"]) for c in page["items"]]
    assert fields == [(0.81, "estimated-trained-accuracy", 0.55),
                      (0.62, "predicted-accuracy", 0.62),
                      (0.81, "estimated-trained-accuracy", 0.55),
                      (None, None, None)]
    best = listed[0]["best_candidate"]
    assert best == page["items"][0]
    assert client.get(f"/v1/search-jobs/{job['id']}").json()["best_candidate"] == best
    for c in page["items"]:
        assert client.get(f"/v1/candidates/{c['id']}").json() == c


def test_the_schema_says_what_a_candidates_score_is(client) -> None:
    fields = client.get("/openapi.json").json()["components"]["schemas"]["CandidateResponse"]
    properties = fields["properties"]
    assert "ranking head" in properties["score_kind"]["description"]
    assert properties["score_kind"]["anyOf"] == [
        {"enum": ["estimated-trained-accuracy", "predicted-accuracy", "negative-predicted-bpc",
                  "short-training-accuracy"],
         "type": "string"},
        {"type": "null"}]
    assert "predicted weights" in properties["predicted_accuracy"]["description"]
    assert {"score_kind", "predicted_accuracy"} <= set(fields["required"])
