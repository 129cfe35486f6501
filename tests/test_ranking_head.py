"""The ranking head: fitting, leave-one-out, clamping, its file, and how the service uses it (the
scorer picks up the head fit on its checkpoint and no other; a search ranks candidates by it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    SMALL_FLOPS,
    made_up_population,
    requires_fashion_mnist,
)

from nas_service.commands import main  # noqa: E402
from nas_service.db import catalog, listings, queue, read_session, write_session  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.scoring.ranking_head import (  # noqa: E402
    RankingHead,
    RankingHeadError,
    fit_ranking_head,
    head_for_checkpoint,
    head_path_for,
    leave_one_out,
)
from nas_service.scoring.scorer import file_sha256, ranking_value  # noqa: E402
from nas_service.search import CheckpointStore, Worker  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support",)


def _head(**kwargs) -> RankingHead:
    return fit_ranking_head(*made_up_population(), task="fashion-mnist",
                            target="test accuracy after 5 epochs", **kwargs)


def test_the_head_ranks_better_than_either_score_alone() -> None:
    s, p, t = made_up_population()
    loo = leave_one_out(s, p, t)
    assert kendall_tau(loo, t) > max(kendall_tau(s, t), kendall_tau(p, t)) + 0.1
    head = _head()
    assert head.architectures == 30
    assert head.kendall_tau == pytest.approx(kendall_tau(loo, t))
    # Fit on all of them, the head reproduces the trend it was fit on.
    fitted = head.predict_many(s, p)
    assert np.abs(fitted - np.asarray(t)).max() < 0.03


def test_leave_one_out_never_sees_the_architecture_it_estimates() -> None:
    s, p, t = made_up_population(12)
    moved = list(t)
    moved[3] = 0.1  # an outlier's own truth must not pull its own estimate
    assert leave_one_out(s, p, moved)[3] == pytest.approx(leave_one_out(s, p, t)[3])
    assert leave_one_out(s, p, moved)[4] != pytest.approx(leave_one_out(s, p, t)[4])


def test_estimates_stay_in_the_fitted_range_and_in_zero_one() -> None:
    head = _head()
    largest = head.predict(0.7, int(10 ** head.high[1]))
    assert head.predict(0.7, 25_000_000_000) == pytest.approx(largest)  # no extrapolation
    assert head.predict(0.7, 0) == pytest.approx(head.predict(0.7, int(10 ** head.low[1]) + 1),
                                                 abs=1e-3)
    assert 0.0 <= head.predict(-5.0, 1) <= head.predict(5.0, 10**9) <= 1.0


def test_fitting_refuses_too_few_or_non_finite_inputs() -> None:
    with pytest.raises(ValueError, match="at least"):
        fit_ranking_head([0.5] * 3, [100] * 3, [0.9] * 3, task="t", target="x")
    s, p, t = made_up_population(8)
    t[2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fit_ranking_head(s, p, t, task="t", target="x")
    with pytest.raises(ValueError, match="trained accuracies"):
        fit_ranking_head(s, p, t[:-1], task="t", target="x")


def test_a_head_file_round_trips_and_broken_ones_are_refused(tmp_path: Path) -> None:
    head = _head(ghn_sha256="ab" * 32, eval_images=1000)
    path = head.save(tmp_path / "h.json")
    assert RankingHead.load(path) == head
    data = json.loads(path.read_text())
    for broken in ({**data, "format": "other/1"}, {**data, "weights": [1.0]},
                   {**data, "std": [0.0, 1.0]}, {**data, "bias": "NaN"},
                   {k: v for k, v in data.items() if k != "mean"},
                   {**data, "features": ["flops", "nodes"]}, [1, 2]):
        path.write_text(json.dumps(broken))
        with pytest.raises(RankingHeadError):
            RankingHead.load(path)
    path.write_text("{not json")
    with pytest.raises(RankingHeadError, match="cannot read"):
        RankingHead.load(path)


def _trainability_population(count: int = 30) -> tuple[list[float], list[int], list[float],
                                                        list[float]]:
    """``(surrogate, parameters, grad_norm, trained)``: as :func:`made_up_population`, and a
    fifth of the networks do not train (tiny gradients at initialisation, chance accuracy)
    whatever their surrogate."""
    s, p, t = made_up_population(count)
    rng = np.random.default_rng(1)
    g = [float(10 ** rng.uniform(0, 1.5)) for _ in range(count)]
    for i in range(0, count, 5):
        g[i], t[i] = float(10 ** rng.uniform(-3, -1.5)), 0.1
    return s, p, g, t


def test_a_head_reading_the_gradient_norm_ranks_untrainable_networks_last() -> None:
    s, p, g, t = _trainability_population()
    features = ("surrogate_accuracy", "log10_parameters", "log10_grad_norm")
    head = fit_ranking_head(s, p, t, grad_norm=g, features=features, task="t", target="x")
    plain = fit_ranking_head(s, p, t, task="t", target="x")
    assert head.uses_grad_norm and not plain.uses_grad_norm
    assert head.kendall_tau > plain.kendall_tau + 0.1
    estimates = head.predict_many(s, p, g)
    untrainable = [estimates[i] for i in range(0, 30, 5)]
    assert max(untrainable) < min(e for i, e in enumerate(estimates) if i % 5)
    with pytest.raises(ValueError, match="gradient norm"):
        head.predict(0.7, 10_000)
    # No usable gradient (vanished to 0, exploded, failed) reads as the smallest seen.
    smallest = head.predict(0.7, 10_000, 10 ** head.low[2])
    for unusable in (0.0, -1.0, float("nan"), float("inf")):
        assert head.predict(0.7, 10_000, unusable) == pytest.approx(smallest)
    # ... also in fitting: a failed gradient norm is not a reason to refuse the population.
    g[1] = float("nan")
    refit = fit_ranking_head(s, p, t, grad_norm=g, features=features, task="t", target="x")
    assert refit.low[2] == pytest.approx(head.low[2])
    with pytest.raises(ValueError, match="distinct names"):
        fit_ranking_head(s, p, t, grad_norm=g, features=("flops",), task="t", target="x")


def test_a_head_file_names_its_features(tmp_path: Path) -> None:
    s, p, g, t = _trainability_population()
    head = fit_ranking_head(s, p, t, grad_norm=g, task="t", target="x",
                            features=("surrogate_accuracy", "log10_grad_norm"))
    path = head.save(tmp_path / "h.json")
    loaded = RankingHead.load(path)
    assert loaded == head and loaded.features == ("surrogate_accuracy", "log10_grad_norm")
    assert loaded.predict(0.6, 1000, 3.0) == head.predict(0.6, 1000, 3.0)
    data = json.loads(path.read_text())
    for broken in ({**data, "features": ["surrogate_accuracy", "surrogate_accuracy"]},
                   {**data, "features": []}, {**data, "features": ["log10_grad_norm"]}):
        path.write_text(json.dumps(broken))
        with pytest.raises(RankingHeadError):
            RankingHead.load(path)


def test_a_head_is_found_beside_its_own_checkpoint_only(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ghn.safetensors"
    checkpoint.write_bytes(b"weights")
    assert head_path_for(checkpoint) == tmp_path / "ghn.ranking-head.json"
    assert head_for_checkpoint(checkpoint, file_sha256(checkpoint)) is None  # no file
    _head(ghn_sha256=file_sha256(checkpoint)).save(head_path_for(checkpoint))
    assert head_for_checkpoint(checkpoint, file_sha256(checkpoint)) is not None
    _head(ghn_sha256="0" * 64).save(head_path_for(checkpoint))  # fit on another GHN's scores
    assert head_for_checkpoint(checkpoint, file_sha256(checkpoint)) is None


def test_a_head_fit_on_another_score_is_ignored(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ghn.safetensors"
    checkpoint.write_bytes(b"weights")
    sha = file_sha256(checkpoint)
    _head(ghn_sha256=sha).save(head_path_for(checkpoint))
    assert head_for_checkpoint(checkpoint, sha, "predicted-readout") is not None
    assert head_for_checkpoint(checkpoint, sha, "predicted-recalibrated") is None
    # A file written before heads named their score was fit on the recalibrated score.
    data = json.loads(head_path_for(checkpoint).read_text())
    del data["score"], data["measured_on"]
    head_path_for(checkpoint).write_text(json.dumps(data))
    assert head_for_checkpoint(checkpoint, sha, "predicted-recalibrated") is not None
    assert head_for_checkpoint(checkpoint, sha, "predicted-readout") is None


def test_ranking_value_prefers_the_head_estimate() -> None:
    assert ranking_value({"value": 0.6}) == 0.6
    assert ranking_value({"value": 0.6, "ranking": None}) == 0.6
    assert ranking_value({"value": 0.6, "ranking": {"value": 0.91}}) == 0.91


def _scorer(path: Path) -> ArchitectureScorer:
    return ArchitectureScorer.load(path, device="cpu", eval_images=64, recalibration_batches=1,
                                   recalibration_batch_size=32)


@requires_fashion_mnist
def test_the_scorer_reports_the_head_estimate_and_versions_it(tiny_ghn_path, ranked_tiny_ghn_path
                                                               ) -> None:
    plain, ranked = _scorer(tiny_ghn_path), _scorer(ranked_tiny_ghn_path)
    assert plain.ranking_head is None and ranked.ranking_head is not None
    # Same GHN weights, but the head is part of how scores are made: another cache key.
    assert plain.ghn_version != ranked.ghn_version
    assert ranked.info()["score"]["ranking"]["name"] == "ranking-head"
    graph = get_space("cells").sample(3, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
    (a,), (b,) = plain.score([graph], "fashion-mnist"), ranked.score([graph], "fashion-mnist")
    assert a.accuracy == b.accuracy
    assert "ranking" not in a.score_record(32)
    record = b.score_record(32)
    assert record["ranking"]["value"] == pytest.approx(
        ranked.ranking_head.predict(b.accuracy, graph.num_parameters))
    assert record["ranking"]["target"] == "test accuracy after 5 epochs"


@requires_fashion_mnist
def test_a_search_ranks_candidates_by_the_head(engine, ranked_tiny_ghn_path, tmp_path) -> None:
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task="fashion-mnist",
                                  strategy="random", seed=3, budget_candidates=4,
                                  constraints={"max_flops": SMALL_FLOPS})
    Worker(engine, _scorer(ranked_tiny_ghn_path), CheckpointStore(tmp_path / "checkpoints"),
           worker_id="w", lease_seconds=5.0, heartbeat_seconds=0.2, batch_size=4,
           poll_seconds=0.05).run(once=True)
    with read_session(engine) as session:
        done = listings.get_job(session, job.id)
        candidates = listings.list_candidates(session, job.id, order_by="index", limit=10).items
        scores = [catalog.get_architecture(session, c.architecture_id).scores
                  for c in candidates]
    assert done.status.value == "succeeded", done.error
    assert [c.score for c in candidates] == [s["ranking"]["value"] for s in scores]
    best = max(candidates, key=lambda c: (c.score, -c.index))
    assert done.best_candidate_id == best.id


@requires_fashion_mnist
def test_rank_ghn_writes_a_head_that_the_scorer_then_uses(tiny_ghn_path, tmp_path) -> None:
    ghn = tmp_path / "ghn.safetensors"
    shutil.copyfile(tiny_ghn_path, ghn)
    out = tmp_path / "rank"
    assert main(["rank-ghn", "--ghn", str(ghn), "--held-out", "5", "--epochs", "0.25",
                 "--max-images", "64", "--sgd-epochs", "0", "--eval-images", "64",
                 "--truth-eval-images", "64", "--out", str(out)]) == 0
    head = RankingHead.load(out / "ranking-head.json")
    assert head.ghn_sha256 == file_sha256(ghn)
    assert (head.architectures, head.eval_images) == (5, 64)
    result = json.loads((out / "result.json").read_text())
    assert result["ranking_head"] == head.to_dict()
    assert "ranking_head" in result["scores"]
    assert "ranking head" in (out / "report.md").read_text()
    assert _scorer(ghn).ranking_head is None  # not beside the checkpoint yet
    shutil.copyfile(out / "ranking-head.json", head_path_for(ghn))
    assert _scorer(ghn).ranking_head == head


def test_the_bundled_ghn_ships_a_head_fit_on_its_own_scores() -> None:
    from nas_service.ghn.checkpoint import bundled_checkpoint_path

    checkpoint = bundled_checkpoint_path()
    head = head_for_checkpoint(checkpoint, file_sha256(checkpoint))
    assert head is not None, ("refit the head (python bench/generalization_bench.py) after "
                              "replacing the bundled GHN")
    assert head.task == "fashion-mnist" and head.architectures >= 30
    assert head.kendall_tau is not None and head.kendall_tau > 0.5
