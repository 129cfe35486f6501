"""Short training as a ranking: a few SGD steps from the default initialisation, the same as the
ground truth's ``sgd_train`` for those steps; search jobs ranked by it, through the worker and the
API, on SQLite and PostgreSQL with a tiny GHN and the real Fashion-MNIST."""

from __future__ import annotations

import json
import threading

import pytest
import torch

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    assert_problem,
    job_state,
    make_worker,
    requires_fashion_mnist,
    wait_until,
)

from nas_service.api.views import job_view  # noqa: E402
from nas_service.data import load_task  # noqa: E402
from nas_service.db import catalog, queue, read_session, write_session  # noqa: E402
from nas_service.graph import ArchitectureGraph, GraphBuilder  # noqa: E402
from nas_service.scoring import (  # noqa: E402
    ArchitectureScorer,
    ScoringBudget,
    ScoringTooCostly,
    accuracy,
    recalibrate,
)
from nas_service.scoring.evaluation import recalibration_batches  # noqa: E402
from nas_service.scoring.protocol import (  # noqa: E402
    SGD_BATCH_SIZE,
    SGD_EPOCH_IMAGES,
    SHORT_TRAINING_MEASUREMENTS,
)
from nas_service.scoring.short_training import (  # noqa: E402
    short_training_accuracy,
    training_batches,
)
from nas_service.spaces import get_space  # noqa: E402
from nas_service.training.evaluate import evaluation_tensors, sgd_train  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

STEPS = 3


def _conv_net(batch_norm: bool):
    b = GraphBuilder((1, 28, 28), name=f"conv-{'bn' if batch_norm else 'plain'}")
    x = b.add("conv2d", b.input, out_channels=8, kernel_size=3, stride=2, padding=1)
    if batch_norm:
        x = b.add("batch_norm", x)
    x = b.add("relu", x)
    x = b.add("conv2d", x, out_channels=12, kernel_size=3, stride=2, padding=1)
    x = b.add("flatten", b.add("relu", x))
    return b.build(b.add("linear", x, out_features=10), num_classes=10)


@pytest.fixture(scope="module")
def data():
    return load_task("fashion-mnist")


@pytest.mark.parametrize("batch_norm", [True, False])
def test_it_is_the_ground_truths_sgd_cut_to_its_steps(data, batch_norm) -> None:
    graph = _conv_net(batch_norm)
    x, y = evaluation_tensors(data, "val", 300, "cpu")
    recalibration = [xb for xb, _ in recalibration_batches(data, "cpu", batches=2)]
    # sgd_train counts steps as a fraction of an epoch of SGD_EPOCH_IMAGES: just under STEPS.
    epochs = (STEPS - 0.5) / (SGD_EPOCH_IMAGES // SGD_BATCH_SIZE)
    trained = sgd_train(graph, data, epochs=epochs, max_images=SGD_EPOCH_IMAGES)
    recalibrate(trained, recalibration)
    expected = accuracy(trained, x, y)
    state = torch.random.get_rng_state()
    batches = training_batches(data, STEPS)
    assert len(batches.labels) == STEPS and batches.batch_size == SGD_BATCH_SIZE
    got = short_training_accuracy(graph, batches, data.spec, recalibration, x, y, steps=STEPS)
    assert got == expected
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's randomness kept
    assert got > 0.2  # three steps already learn something (chance: 0.1)
    # Fewer steps read a prefix of the same batches.
    assert short_training_accuracy(graph, training_batches(data, STEPS + 2), data.spec,
                                   recalibration, x, y, steps=STEPS) == expected


def test_a_batch_over_the_memory_budget_is_accumulated_in_parts(data) -> None:
    graph = _conv_net(batch_norm=False)  # without batch norm, parts give the same step
    x, y = evaluation_tensors(data, "val", 300, "cpu")
    recalibration = [xb for xb, _ in recalibration_batches(data, "cpu", batches=1)]
    batches = training_batches(data, STEPS)
    whole = short_training_accuracy(graph, batches, data.spec, recalibration, x, y,
                                    steps=STEPS)
    parts = short_training_accuracy(graph, batches, data.spec, recalibration, x, y,
                                    steps=STEPS, train_batch_size=32)
    assert abs(whole - parts) <= 3 / 300  # float sums in another order: a prediction or two


def test_the_scorer_refuses_what_it_cannot_afford_and_parts_what_it_can(scorer) -> None:
    spec = scorer.check_task("fashion-mnist")
    graph = get_space("cells").sample(2, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
    result = scorer.short_training(graph, spec, STEPS)
    assert 0.0 <= result.accuracy <= 1.0 and result.steps == STEPS and result.seconds > 0
    again = scorer.short_training(graph, spec, STEPS)  # remembered, not trained again
    assert (again.accuracy, again.seconds) == (result.accuracy, 0.0)
    tight = scorer.sibling(ScoringBudget(max_bytes=200 * 2**20))
    cost = tight.short_training_cost(graph, spec, STEPS)
    assert 2 <= cost.train_batch_size < SGD_BATCH_SIZE  # accumulated, not refused
    assert 0.0 <= tight.short_training(graph, spec, STEPS).accuracy <= 1.0
    with pytest.raises(ScoringTooCostly, match="a short training of this graph needs"):
        scorer.sibling(ScoringBudget(max_macs=1000)).short_training(graph, spec, STEPS)


# ---- search jobs ranked by short training -------------------------------------------------------


def _job(engine, candidates: int, **kwargs) -> str:
    fields = dict(space="cells", task="fashion-mnist", strategy="random", seed=5,
                  budget_candidates=candidates, constraints={"max_flops": SMALL_FLOPS},
                  ranking={"method": "short-training", "steps": STEPS})
    fields.update(kwargs)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, **fields)
        return job.id


def test_a_job_ranks_every_candidate_by_its_short_training(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 4)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    assert [c.status.value for c in candidates] == ["scored"] * 4
    for c in candidates:
        (entry,) = c.rung_scores
        assert entry["score_kind"] == "short-training-accuracy"
        assert c.seconds >= entry["short_training_seconds"] >= 0  # 0: remembered from before
        assert c.score == entry["score"] != entry["predicted_accuracy"]
    best = max(candidates, key=lambda c: (c.score, -c.index))
    assert job.best_candidate_id == best.id
    # The score is the protocol's accuracy for the stored graph, on the scorer's images.
    with read_session(engine) as session:
        stored = catalog.get_architecture(session, best.architecture_id)
        graph = ArchitectureGraph.from_json(stored.graph)
    data = scorer.task_tensors("fashion-mnist")
    expected = short_training_accuracy(
        graph, training_batches(load_task("fashion-mnist"), STEPS), data.spec,
        data.recalibration, data.val_images, data.val_labels, steps=STEPS)
    assert expected == best.score


def test_with_rungs_only_the_last_rung_is_ranked_by_short_training(engine, scorer,
                                                                  tmp_path) -> None:
    job_id = _job(engine, 4, fidelity={"rungs": [16, EVAL_IMAGES], "eta": 2, "bracket": 4})
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    promoted = [c for c in candidates if c.rung == 1]
    assert len(promoted) == 2
    for c in candidates:
        assert "score_kind" not in c.rung_scores[0]  # screened by the GHN's score
        if c.rung == 1:
            assert c.rung_scores[1]["score_kind"] == "short-training-accuracy"
            assert c.score == c.rung_scores[1]["score"]
    assert job.best_candidate_id == max(promoted, key=lambda c: (c.score, -c.index)).id


def test_a_candidate_whose_short_training_is_unaffordable_is_rejected_with_the_reason(
        engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 2)
    # Scoring fits (its MACs are those of 1,000-odd images), 3 x 3 x 128 training images do not.
    graph = get_space("cells").sample(0, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
    spec = scorer.check_task("fashion-mnist")
    score_macs = scorer.check_affordable(graph, spec).macs
    tight = scorer.sibling(ScoringBudget(max_macs=int(score_macs * 1.5)))
    make_worker(engine, tight, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    rejected = [c for c in candidates if c.status.value == "rejected"]
    assert rejected, [(c.status.value, c.reason) for c in candidates]
    for c in rejected:
        assert c.reason.startswith("short training: ScoringTooCostly: a short training of")
        assert c.score is None and c.architecture_id is not None  # its checkpoint is kept


def test_a_cancel_stops_a_batch_of_short_trainings_after_the_one_running(
        engine, scorer, tmp_path, monkeypatch) -> None:
    job_id = _job(engine, 3)  # one batch of the test worker's 3
    cancel_seen = threading.Event()
    heartbeat = queue.heartbeat

    def watched_heartbeat(*args, **kwargs):
        status = heartbeat(*args, **kwargs)
        if status.cancel_requested:
            cancel_seen.set()
        return status

    trained = []
    short_training = ArchitectureScorer.short_training

    def cancelled_during_the_first(self, graph, task, steps):
        trained.append(graph.content_hash())
        if len(trained) == 1:  # the user cancels while the first candidate trains
            with write_session(engine) as session:
                queue.request_cancel(session, job_id)
            assert cancel_seen.wait(60), "the worker's heartbeat never saw the cancel"
        return short_training(self, graph, task, steps)

    monkeypatch.setattr(queue, "heartbeat", watched_heartbeat)
    monkeypatch.setattr(ArchitectureScorer, "short_training", cancelled_during_the_first)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "cancelled"
    # The other two were scored by the GHN in the same batch, but neither trained nor recorded.
    assert len(trained) == 1
    assert [(c.index, c.status.value) for c in candidates] == [(0, "scored")]
    assert candidates[0].rung_scores[0]["score_kind"] == "short-training-accuracy"


def test_the_api_takes_the_ranking_and_labels_the_scores(make_client) -> None:
    client = make_client(worker_in_process=True)
    body = {"space": "cells", "task": "fashion-mnist", "seed": 7, "budget": {"candidates": 2},
            "constraints": {"max_flops": SMALL_FLOPS},
            "ranking": {"method": "short-training", "steps": STEPS}}
    r = client.post("/v1/search-jobs", json=body)
    assert r.status_code == 202, r.text
    ranking = r.json()["ranking"]
    assert ranking["method"] == "short-training" and ranking["steps"] == STEPS
    assert f"after {STEPS} steps of SGD" in ranking["target"]
    assert ranking["kendall_tau"] is None  # measured at 8 steps, not 3: no tau is quoted
    url = f"/v1/search-jobs/{r.json()['id']}"
    done = wait_until(lambda: (j := client.get(url).json())["status"] in ("succeeded", "failed")
                      and j, "the job to finish")
    assert done["status"] == "succeeded", done
    items = client.get(done["links"]["candidates"]).json()["items"]
    for c in items:
        assert c["score_kind"] == "short-training-accuracy"
        assert c["rung_scores"][0]["score_kind"] == "short-training-accuracy"
        assert c["predicted_accuracy"] is not None  # the GHN's score beside it
    # At the default 8 steps the job quotes the tau the benchmark recorded, and where.
    default = client.post("/v1/search-jobs", json={**body, "ranking": {
        "method": "short-training"}}).json()["ranking"]
    measured = json.loads(SHORT_TRAINING_MEASUREMENTS.read_text())["tasks"]["fashion-mnist"]["8"]
    assert default["steps"] == 8 and default["kendall_tau"] == measured["kendall_tau"]
    assert default["measured_on"] == measured["measured_on"]
    assert "held out of the GHN's training" in default["measured_on"]
    ghn = client.post("/v1/search-jobs", json={k: v for k, v in body.items()
                                               if k != "ranking"}).json()["ranking"]
    assert ghn == {"method": "ghn", "steps": None, "target": None, "kendall_tau": None,
                   "measured_on": None}


@pytest.mark.parametrize(("ranking", "location"), [
    ({"method": "ghn", "steps": 4}, "/body/ranking"),
    ({"method": "short-training", "steps": 0}, "/body/ranking/steps"),
    ({"method": "short-training", "steps": 63}, "/body/ranking/steps"),
    ({"method": "short-training", "steps": "8"}, "/body/ranking/steps"),
    ({"method": "sgd"}, "/body/ranking/method"),
    ({"method": "short-training", "lr": 0.1}, "/body/ranking/lr"),
])
def test_a_ranking_that_cannot_run_is_a_422_naming_where(client, ranking, location) -> None:
    r = client.post("/v1/search-jobs", json={"space": "cells", "budget": {"candidates": 1},
                                             "ranking": ranking})
    problem = assert_problem(r, 422)
    assert location in [e["location"] for e in problem["errors"]], problem


@pytest.mark.parametrize("ranking", [{"method": "short-training", "steps": "8"},
                                     {"method": "short-training", "steps": 10**6},
                                     {"method": "anneal"}])
def test_a_stored_ranking_that_cannot_run_fails_its_job_with_the_reason(
        engine, scorer, tmp_path, ranking) -> None:
    """A row the API would not have written (an older version, a hand edit): the worker fails
    the job saying why, and the job still reads."""
    job_id = _job(engine, 2, ranking=ranking)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "failed" and candidates == []
    assert job.error.startswith("cannot run this job: ")
    assert ("steps" in job.error) if "steps" in ranking else ("anneal" in job.error)
    assert job_view(job, None).ranking.method in ("ghn", "short-training")
