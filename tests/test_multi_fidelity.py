"""Multi-fidelity scoring: the schedules' rules, scores at a cheaper fidelity, and search jobs
that score every candidate cheaply and only the best of each bracket at the full budget, on a
real database (SQLite and PostgreSQL), a real tiny GHN and the real Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    job_state,
    make_worker,
    requires_fashion_mnist,
)

from nas_service.db import (  # noqa: E402
    Candidate,
    catalog,
    listings,
    queue,
    read_session,
    write_session,
)
from nas_service.graph import to_module  # noqa: E402
from nas_service.scoring import accuracy  # noqa: E402
from nas_service.scoring.fidelity import (  # noqa: E402
    Fidelity,
    FidelityError,
    FidelitySchedule,
    expected_cost_per_candidate,
    scaled_recalibration_batches,
)
from nas_service.search import WorkerHooks  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support",)

LOW = 16
FIDELITY = {"rungs": [LOW, EVAL_IMAGES], "eta": 2, "bracket": 4}


# ---- schedules, without data ---------------------------------------------------------------------


@pytest.mark.parametrize(("config", "field", "index"), [
    ({"rungs": [250, 250, 1000]}, "rungs", 1),
    ({"rungs": [500, 250, 1000]}, "rungs", 1),
    ({"rungs": [250, 500]}, "rungs", 1),  # the last rung is not the full budget
    ({"rungs": [0, 1000]}, "rungs", 0),
    ({"rungs": [250, 1000], "eta": 1}, "eta", None),
    ({"rungs": [250, 1000], "eta": 4, "bracket": 3}, "bracket", None),
    ({"rungs": []}, "rungs", None),
])
def test_a_schedule_that_cannot_run_names_what_is_wrong(config, field, index) -> None:
    with pytest.raises(FidelityError) as caught:
        FidelitySchedule.from_config(config, 1000)
    assert (caught.value.field, caught.value.index) == (field, index)


def test_each_bracket_promotes_its_best_fraction_with_ties_to_the_lower_index() -> None:
    schedule = FidelitySchedule.from_config({"rungs": [250, 1000], "eta": 4}, 1000)
    assert schedule.bracket_size == 16 and schedule.top_rung == 1
    assert [(b.start, b.stop) for b in schedule.brackets(40)] == [(0, 16), (16, 32), (32, 40)]
    scores = {i: 0.5 for i in range(16)} | {3: 0.9, 11: 0.8, 7: 0.7}
    assert schedule.promoted(scores) == [0, 3, 7, 11]  # 0.5 tie: index 0 wins the fourth place
    assert schedule.promoted({20: 0.1, 21: 0.2, 22: 0.3}) == [22]  # ceil(3 / 4) = 1
    assert schedule.promoted({}) == []


def test_one_rung_is_one_bracket_and_today_s_full_score() -> None:
    schedule = FidelitySchedule.from_config(None, 1000)
    assert schedule.rungs == (1000,) and schedule.top_rung == 0
    assert [(b.start, b.stop) for b in schedule.brackets(37)] == [(0, 37)]


def test_cheaper_rungs_recalibrate_on_proportionally_fewer_batches() -> None:
    assert scaled_recalibration_batches(250, 1000, 4) == 1
    assert scaled_recalibration_batches(500, 1000, 4) == 2
    assert scaled_recalibration_batches(10, 1000, 4) == 1
    assert scaled_recalibration_batches(1000, 1000, 4) == 4
    # 16 candidates at 1 s, 4 of them at 4 s more: 2 s each on average.
    schedule = FidelitySchedule.from_config({"rungs": [250, 1000], "eta": 4}, 1000)
    assert expected_cost_per_candidate(schedule, [1.0, 4.0]) == pytest.approx(2.0)


# ---- the scorer at a fidelity ------------------------------------------------------------------


@requires_fashion_mnist
def test_a_cheaper_fidelity_scores_the_first_images_and_its_checkpoint_reproduces_it(
        scorer) -> None:
    spec = scorer.check_task("fashion-mnist")
    assert scorer.at_fidelity(Fidelity(EVAL_IMAGES, 1), spec) is scorer
    low = scorer.at_fidelity(Fidelity(LOW, 1), spec)
    assert low is scorer.at_fidelity(Fidelity(LOW, 1), spec)  # one view per fidelity
    assert low.ghn_version != scorer.ghn_version and low.lock is scorer.lock
    # On a CPU every fidelity runs channels-last.
    assert low.channels_last and scorer.channels_last
    assert low.task_tensors(spec).val_images.is_contiguous(memory_format=torch.channels_last)
    graph = get_space("cells").sample(3, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
    (cheap,), (full,) = low.score([graph], spec), scorer.score([graph], spec)
    assert (cheap.images, full.images) == (LOW, EVAL_IMAGES)
    assert cheap.score_record(low.recalibration_images)["images"] == LOW
    assert all(v.is_contiguous() for v in cheap.state.values())  # ready for safetensors
    data = scorer.task_tensors(spec)
    images = data.val_images.contiguous()  # what a user has: the default layout
    net = to_module(graph, initialize=False)
    net.load_state_dict(full.state)
    assert accuracy(net, images, data.val_labels) == full.accuracy
    net.load_state_dict(cheap.state)
    assert accuracy(net, images[:LOW], data.val_labels[:LOW]) == cheap.accuracy
    # The same predicted weights and recalibration: the full score's first LOW images agree.
    assert all(torch.equal(cheap.state[k], full.state[k]) for k in full.state)
    net.load_state_dict(full.state)
    assert accuracy(net, images[:LOW], data.val_labels[:LOW]) == cheap.accuracy


# ---- search jobs with rungs -------------------------------------------------------------------


def _job(engine, candidates: int = 8, **kwargs) -> str:
    fields = dict(space="cells", task="fashion-mnist", strategy="random", seed=3,
                  budget_candidates=candidates, constraints={"max_flops": SMALL_FLOPS},
                  fidelity=FIDELITY)
    fields.update(kwargs)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, **fields)
        return job.id


def _summary(engine, candidates: list[Candidate]) -> list[tuple]:
    with read_session(engine) as session:
        return [(c.index, c.status.value, c.rung, c.eval_images, c.score,
                 catalog.get_architecture(session, c.architecture_id).content_hash
                 if c.architecture_id else None,
                 [(e["rung"], e["images"], e["score"]) for e in c.rung_scores or []])
                for c in candidates]


@requires_fashion_mnist
def test_every_candidate_is_scored_cheaply_and_the_best_of_each_bracket_in_full(
        engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 8)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    assert job.fidelity == FIDELITY and job.progress_done == 8
    scored = [c for c in candidates if c.status.value == "scored"]
    assert len(scored) == 8
    for bracket in (range(0, 4), range(4, 8)):
        members = [c for c in scored if c.index in bracket]
        rung0 = {c.index: c.rung_scores[0]["score"] for c in members}
        assert all(c.rung_scores[0]["rung"] == 0 and c.rung_scores[0]["images"] == LOW
                   for c in members)
        best_two = sorted(rung0, key=lambda i: (-rung0[i], i))[:2]
        assert sorted(c.index for c in members if c.rung == 1) == sorted(best_two)
        for c in members:
            if c.rung == 1:  # promoted: the full score is the candidate's score now
                assert c.eval_images == EVAL_IMAGES and len(c.rung_scores) == 2
                assert c.score == c.rung_scores[1]["score"]
                assert c.architecture_id == c.rung_scores[1]["architecture_id"]
                assert c.architecture_id != c.rung_scores[0]["architecture_id"]
            else:
                assert c.rung == 0 and c.eval_images == LOW and c.score == rung0[c.index]
    # Only full-fidelity scores compete for best, even where a cheap score is higher.
    full = [c for c in scored if c.rung == 1]
    assert job.best_candidate_id == max(full, key=lambda c: (c.score, -c.index)).id
    with read_session(engine) as session:
        architecture = catalog.get_architecture(session, scored[0].rung_scores[0]
                                                ["architecture_id"])
        assert architecture.scores["images"] == LOW


@requires_fashion_mnist
def test_a_worker_killed_mid_rung_loses_nothing_and_the_redo_promotes_the_same(
        engine, scorer, tmp_path) -> None:
    reference = _job(engine, 8, seed=11)
    crashed = _job(engine, 8, seed=11)
    make_worker(engine, scorer, tmp_path).run(once=True)
    batches: list[list[int]] = []

    def crash_in_the_first_promotions(job_id: str, indices: list[int]) -> None:
        batches.append(indices)
        if len(batches) == 3:  # rung 0 of bracket 0 (two batches of 3 and 1), a promotion
            raise RuntimeError("simulated crash")

    dying = make_worker(engine, scorer, tmp_path, worker_id="dying",
                    hooks=WorkerHooks(batch_done=crash_in_the_first_promotions))
    claimed = queue.claim_next_job(engine, dying.worker_id, 5.0)
    assert claimed.job_id == crashed
    assert dying.run_job(claimed) == "abandoned"
    job, candidates = job_state(engine, crashed)
    assert [c.index for c in candidates] == [0, 1, 2, 3]
    assert sum(c.rung == 1 for c in candidates) == 2  # the promotion batch was recorded
    assert job.status.value == "queued"  # given back at once, for any worker to go on
    make_worker(engine, scorer, tmp_path, worker_id="rescuer").run(once=True)
    job, candidates = job_state(engine, crashed)
    assert job.status.value == "succeeded" and job.attempts == 2
    assert _summary(engine, candidates) == _summary(engine, job_state(engine, reference)[1])


@requires_fashion_mnist
def test_evolution_with_rungs_selects_parents_by_their_cheap_scores(engine, scorer,
                                                                    tmp_path) -> None:
    job_id = _job(engine, 6, strategy="evolution",
                  fidelity={"rungs": [LOW, EVAL_IMAGES], "eta": 2, "bracket": 2})
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    assert [c.index for c in candidates] == list(range(6))
    assert sum(c.rung == 1 for c in candidates if c.status.value == "scored") == 3


@requires_fashion_mnist
def test_a_job_whose_rungs_do_not_end_at_the_full_budget_fails_with_the_reason(
        engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 2, fidelity={"rungs": [LOW, EVAL_IMAGES // 2], "eta": 2})
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, _ = job_state(engine, job_id)
    assert job.status.value == "failed" and "full budget" in job.error


def test_promoting_twice_changes_nothing_and_needs_the_lease(engine) -> None:
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task="fashion-mnist",
                                  strategy="random", seed=0, budget_candidates=2,
                                  fidelity={"rungs": [10, 20], "eta": 2, "bracket": 2})
    claimed = queue.claim_next_job(engine, "w", 30.0)
    token = claimed.lease_token
    for i, score in enumerate((0.9, 0.5)):
        queue.record_candidate(engine, job.id, token, i, status="scored", score=score,
                               rung=0, eval_images=10)
    with read_session(engine) as session:
        assert listings.get_job(session, job.id).best_candidate_id is None  # no full score yet
    assert queue.promote_candidate(engine, job.id, token, 1, rung=1, eval_images=20,
                                   score=0.6, seconds=2.0)
    assert not queue.promote_candidate(engine, job.id, token, 1, rung=1, eval_images=20,
                                       score=0.7)
    assert queue.promote_candidate(engine, job.id, token, 0, rung=1, eval_images=20,
                                   score=None, error="RuntimeError: out of luck")
    with pytest.raises(queue.LeaseLost):
        queue.promote_candidate(engine, job.id, "not-the-token", 0, rung=1, eval_images=20,
                                score=0.1)
    with read_session(engine) as session:
        job_row = listings.get_job(session, job.id)
        rows = listings.list_candidates(session, job.id, order_by="index", limit=10).items
    assert [(c.rung, c.score) for c in rows] == [(0, 0.9), (1, 0.6)]
    assert rows[0].rung_scores[1]["error"] == "RuntimeError: out of luck"
    assert job_row.best_candidate_id == rows[1].id  # 0.9 is a cheap score: not a full one
