"""The worker against a real database (SQLite and PostgreSQL), a real tiny GHN and the real
Fashion-MNIST: completion, redo after a crash, cancel, lost leases, rejections, failures, stop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    job_state,
    make_worker,
    requires_fashion_mnist,
    tiny_graph,
)
from sqlalchemy import update  # noqa: E402

from nas_service.db import (  # noqa: E402
    Candidate,
    SearchJob,
    catalog,
    db_now,
    listings,
    queue,
    read_session,
    write_session,
)
from nas_service.search import (  # noqa: E402
    Outcome,
    RandomSearch,
    RegularizedEvolution,
    WorkerHooks,
    candidate_seed,
    check_constraints,
)
from nas_service.search.worker import _batches  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = requires_fashion_mnist

SHAPE = (1, 28, 28)


def _job(engine, candidates: int = 6, **kwargs) -> str:
    fields = dict(space="cells", task="fashion-mnist", strategy="random", seed=5,
                  budget_candidates=candidates, constraints={"max_flops": SMALL_FLOPS})
    fields.update(kwargs)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, **fields)
        return job.id


def _hashes(engine, candidates: list[Candidate]) -> list[str | None]:
    with read_session(engine) as session:
        return [catalog.get_architecture(session, c.architecture_id).content_hash
                if c.architecture_id else None for c in candidates]


def test_a_job_runs_to_completion_with_every_index_exactly_once(engine, scorer,
                                                                 tmp_path) -> None:
    job_id = _job(engine, 6)
    worker = make_worker(engine, scorer, tmp_path)
    worker.run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded", job.error
    assert [c.index for c in candidates] == [0, 1, 2, 3, 4, 5]
    assert all(c.status.value == "scored" and c.architecture_id for c in candidates)
    assert job.progress_done == 6
    best = max(candidates, key=lambda c: (c.score, -c.index))
    assert job.best_candidate_id == best.id
    assert job.lease_token is None and job.attempts == 1
    # Candidate i is the space's architecture of candidate_seed(seed, i), within the bounds.
    expected = [get_space("cells").sample(candidate_seed(5, i), SHAPE, 10, max_flops=SMALL_FLOPS)
                for i in range(6)]
    assert _hashes(engine, candidates) == [g.content_hash() for g in expected]
    assert all(c.flops <= SMALL_FLOPS for c in candidates)
    # Nothing left: a second pass returns at once.
    worker.run(once=True)
    assert job_state(engine, job_id)[0].attempts == 1


def test_a_job_redone_after_a_crash_gives_the_same_candidates(engine, scorer,
                                                              tmp_path) -> None:
    reference = _job(engine, 5, seed=9)
    crashed = _job(engine, 5, seed=9)
    make_worker(engine, scorer, tmp_path).run(once=True)

    def crash_after_first_batch(job_id: str, indices: list[int]) -> None:
        raise RuntimeError("simulated crash")

    dying = make_worker(engine, scorer, tmp_path, batch_size=2, worker_id="dying",
                    hooks=WorkerHooks(batch_done=crash_after_first_batch))
    claimed = queue.claim_next_job(engine, dying.worker_id, 5.0)
    assert claimed.job_id == crashed
    assert dying.run_job(claimed) == "abandoned"
    job, candidates = job_state(engine, crashed)
    # Back in the queue at once, the attempt counted: no waiting for the lease to run out.
    assert job.status.value == "queued" and job.lease_token is None and job.attempts == 1
    assert [c.index for c in candidates] == [0, 1]

    make_worker(engine, scorer, tmp_path, worker_id="rescuer").run(once=True)
    job, candidates = job_state(engine, crashed)
    assert job.status.value == "succeeded" and job.attempts == 2
    assert [c.index for c in candidates] == [0, 1, 2, 3, 4]
    assert _hashes(engine, candidates) == _hashes(engine, job_state(engine, reference)[1])


def test_a_job_released_from_another_thread_mid_batch_is_claimable_at_once(
        engine, scorer, tmp_path) -> None:
    import threading

    job_id = _job(engine, 6)
    in_batch, go_on = threading.Event(), threading.Event()

    def hold_the_first_batch(job: str, indices: list[int]) -> None:
        in_batch.set()
        go_on.wait(30)

    worker = make_worker(engine, scorer, tmp_path, batch_size=2,
                         hooks=WorkerHooks(batch_done=hold_the_first_batch))
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    assert in_batch.wait(60)
    # A server whose grace period ran out: the job goes back to the queue without waiting for
    # the batch, its attempt not counted.
    assert worker.release_current_job()
    job, _ = job_state(engine, job_id)
    assert job.status.value == "queued" and job.attempts == 0 and job.lease_token is None
    go_on.set()
    thread.join(60)
    assert not thread.is_alive()
    assert not worker.release_current_job()  # nothing held any more
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "queued"  # the released worker wrote nothing after the release
    assert [c.index for c in candidates] == [0, 1]


def test_cancelling_mid_job_stops_it_at_the_next_batch(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 6)

    def cancel(job: str, indices: list[int]) -> None:
        if indices[0] == 0:
            with write_session(engine) as session:
                queue.request_cancel(session, job)

    worker = make_worker(engine, scorer, tmp_path, batch_size=2,
                     hooks=WorkerHooks(batch_done=cancel))
    worker.run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "cancelled"
    assert [c.index for c in candidates] == [0, 1]
    assert job.finished_at is not None and job.lease_token is None


def test_a_worker_that_loses_its_lease_stops_writing(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 6)
    thief: list = []

    def steal(job: str, indices: list[int]) -> None:
        if thief:
            return
        # The lease expires and another worker claims the job. The victim's lease keeper may
        # renew the expired lease first (still its own until someone claims it): try again.
        for _ in range(50):
            with write_session(engine) as session:
                session.execute(update(SearchJob).where(SearchJob.id == job)
                                .values(lease_expires_at=db_now(-1)))
            claimed = queue.claim_next_job(engine, "thief", 30.0)
            if claimed is not None:
                thief.append(claimed)
                return
        raise AssertionError("could not take the lease over")

    outcomes: list[str] = []
    worker = make_worker(engine, scorer, tmp_path, batch_size=2,
                     hooks=WorkerHooks(batch_done=steal, job_finished=outcomes.append))
    worker.run(once=True)
    assert outcomes == ["lease_lost"]
    job, candidates = job_state(engine, job_id)
    assert [c.index for c in candidates] == [0, 1]
    assert job.status.value == "running"
    assert job.lease_owner == "thief" and job.lease_token == thief[0].lease_token
    assert thief[0].done_indices == frozenset({0, 1})


def test_stopping_releases_the_job_to_the_queue(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 6)
    worker = make_worker(engine, scorer, tmp_path, batch_size=2)
    worker.hooks = WorkerHooks(batch_done=lambda job, indices: worker.stop())
    worker.run()
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "queued" and job.attempts == 0 and job.lease_token is None
    assert [c.index for c in candidates] == [0, 1]


def test_impossible_constraints_reject_candidates_with_a_reason(engine, scorer,
                                                                tmp_path) -> None:
    job_id = _job(engine, 2, constraints={"max_parameters": 10})
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded"
    assert [c.status.value for c in candidates] == ["rejected", "rejected"]
    assert all("fits the bounds" in c.reason for c in candidates)
    assert job.best_candidate_id is None


def test_constraints_are_checked_on_the_graph() -> None:
    graph = tiny_graph(4)
    assert check_constraints(graph, {}) is None
    assert check_constraints(graph, {"max_parameters": graph.num_parameters}) is None
    assert "max_parameters" in check_constraints(graph, {"max_parameters": 10})
    assert "max_flops" in check_constraints(graph, {"max_flops": 100})


def test_a_candidate_that_fails_is_recorded_and_the_job_goes_on(engine, scorer, tmp_path,
                                                                monkeypatch) -> None:
    job_id = _job(engine, 4)
    original = scorer._evaluate
    calls: list[int] = []

    def flaky(graph, params, data, predict_seconds):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA is on fire")
        return original(graph, params, data, predict_seconds)

    monkeypatch.setattr(scorer, "_evaluate", flaky)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded"
    assert [c.status.value for c in candidates] == ["scored", "failed", "scored", "scored"]
    assert candidates[1].reason == "RuntimeError: CUDA is on fire"
    assert candidates[1].architecture_id is None and candidates[1].score is None


def test_a_job_for_a_task_without_a_ghn_fails_at_once(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 2, task="cifar10")
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "failed" and "cifar10" in job.error
    assert candidates == []


def test_a_spent_time_budget_ends_the_job_with_what_it_has(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 6, budget_seconds=1e-6)
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded"
    assert len(candidates) < 6
    with read_session(engine) as session:
        assert "budget_seconds_spent" in [e.kind for e in listings.list_events(session, job_id)]


def test_evolution_runs_a_job_to_completion(engine, scorer, tmp_path) -> None:
    job_id = _job(engine, 5, strategy="evolution")
    make_worker(engine, scorer, tmp_path).run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded"
    assert [c.index for c in candidates] == [0, 1, 2, 3, 4]


# ---- strategies, without the database -----------------------------------------------------------


def test_evolution_mutates_tournament_winners_and_replays_deterministically() -> None:
    def strategy() -> RegularizedEvolution:
        return RegularizedEvolution("cells", seed=3, input_shape=SHAPE, num_classes=10,
                                    constraints={"max_flops": SMALL_FLOPS}, population_size=3,
                                    sample_size=3, generation_size=2)

    first = strategy()
    history: dict[int, Outcome] = {}
    proposals = []
    scores = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1, 4: 0.3, 5: 0.95, 6: 0.4, 7: 0.6}
    for i in range(8):
        p = first.propose(i, history)
        proposals.append(p)
        history[i] = Outcome("scored", scores[i])
    # The first population_size candidates are random; candidate 3 (generation 2..3) sees 0..1.
    assert [p.parent for p in proposals[:4]] == [None, None, None, 1]
    # Candidates 4 and 5 (one generation) see 0..3; the population is the 3 most recent scored
    # (1, 2, 3) and a tournament of all 3 picks candidate 1 (0.9).
    assert proposals[4].parent == proposals[5].parent == 1
    # 6 and 7 see 0..5: population (3, 4, 5), winner 5 (0.95).
    assert proposals[6].parent == proposals[7].parent == 5
    parent = first.propose(1, history).genome
    assert proposals[4].genome != parent

    # A fresh strategy with the same history (a worker resuming the job) proposes the same.
    replay = strategy()
    for i in (7, 4, 6, 5):
        assert replay.propose(i, history).graph == proposals[i].graph


def test_random_search_is_a_pure_function_of_seed_and_index() -> None:
    a = RandomSearch("macro", seed=1, input_shape=SHAPE, num_classes=10)
    b = RandomSearch("macro", seed=1, input_shape=SHAPE, num_classes=10)
    assert a.propose(3, {}).graph == b.propose(3, {}).graph
    assert a.propose(3, {}).graph != a.propose(4, {}).graph
    assert candidate_seed(2, 0) == 2 * 1_000_003


def test_batches_never_cross_a_generation() -> None:
    assert _batches([0, 1, 2, 3, 4], 2, None) == [[0, 1], [2, 3], [4]]
    assert _batches([0, 1, 2, 3, 4, 5], 8, 4) == [[0, 1, 2, 3], [4, 5]]
    assert _batches([1, 3, 5, 6], 3, 4) == [[1, 3], [5, 6]]


@contextlib.contextmanager
def _stuck_worker(engine, scorer, tmp_path, monkeypatch, stuck,
                  hooks: WorkerHooks | None = None) -> Iterator[Any]:
    """Runs a worker (``scoring_timeout_seconds`` 5) whose scorer blocks every graph for which
    ``stuck(data)`` holds, as a kernel that does not return would; yields the worker once its
    watchdog gave the batch up, then lets the block end and waits for the worker's thread."""
    release = threading.Event()
    original = scorer._evaluate

    def evaluate(graph, params, data, predict_seconds):
        if stuck(data):
            release.wait(120)
        return original(graph, params, data, predict_seconds)

    monkeypatch.setattr(scorer, "_evaluate", evaluate)
    worker = make_worker(engine, scorer, tmp_path, scoring_timeout_seconds=5.0, hooks=hooks)
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    try:
        assert worker.stuck.wait(120)
        yield worker
    finally:
        release.set()
        thread.join(120)
    assert not thread.is_alive()
    monkeypatch.undo()


def test_a_batch_stuck_in_scoring_is_failed_and_its_job_given_back(engine, scorer, tmp_path,
                                                                   monkeypatch) -> None:
    job_id = _job(engine, 4)
    seen = []
    recorded: list[str] = []
    outcomes: list[str] = []
    hooks = WorkerHooks(candidate_recorded=recorded.append, job_finished=outcomes.append)
    # The second batch (batch_size 3: candidate 3) never returns.
    with _stuck_worker(engine, scorer, tmp_path, monkeypatch,
                       lambda data: seen.append(1) or len(seen) == 4, hooks):
        job, candidates = job_state(engine, job_id)
        # Back in the queue at once, the attempt counted; the stuck candidate failed, named.
        assert job.status.value == "queued" and job.lease_token is None
        assert [c.status.value for c in candidates] == ["scored"] * 3 + ["failed"]
        assert "scoring did not finish in 5 s" in candidates[3].reason
    # The stuck thread came back to a lost lease: it wrote nothing more, and the job's outcome
    # was reported once, by the watchdog; the candidate it failed counts as recorded.
    assert [c.status.value for c in job_state(engine, job_id)[1]] == ["scored"] * 3 + ["failed"]
    assert recorded == ["scored"] * 3 + ["failed"] and outcomes == ["abandoned"]
    # Another worker finishes the job without trying the stuck candidate again.
    make_worker(engine, scorer, tmp_path, worker_id="rescuer").run(once=True)
    job, candidates = job_state(engine, job_id)
    assert job.status.value == "succeeded" and job.attempts == 2
    assert [c.status.value for c in candidates] == ["scored"] * 3 + ["failed"]


def test_a_promotion_stuck_in_scoring_records_the_rungs_failure(engine, scorer, tmp_path,
                                                                monkeypatch) -> None:
    job_id = _job(engine, 2, fidelity={"rungs": [16, EVAL_IMAGES], "eta": 2, "bracket": 2})
    # Rung 0 scores on 16 images; the promotion to the full budget never returns.
    with _stuck_worker(engine, scorer, tmp_path, monkeypatch,
                       lambda data: len(data.val_labels) == EVAL_IMAGES):
        job, candidates = job_state(engine, job_id)
        assert job.status.value == "queued"
        promoted = [c for c in candidates if len(c.rung_scores or []) > 1]
        assert len(promoted) == 1 and promoted[0].rung == 0  # keeps its rung-0 score
        assert "did not finish" in promoted[0].rung_scores[-1]["error"]
