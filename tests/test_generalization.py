"""The generalisation benchmark's sets and summaries (the benchmark itself runs in bench/)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from nas_service.scoring.ranking_head import RankingHead
from nas_service.spaces import family_of
from nas_service.training.generalization import (
    BASELINE,
    GROUND_TRUTH,
    HELD_OUT_FAMILIES,
    RANKED,
    architecture_sets,
    rows_by_set,
    summarize_generalization,
    summarize_set,
)
from nas_service.training.ranking import GroundTruthCache
from nas_service.zoo.handwritten import HANDWRITTEN


def test_sets_keep_held_out_families_apart_from_the_in_distribution_set():
    sets = architecture_sets((1, 28, 28), 10, per_set=6)
    assert set(sets) == {"in_distribution", "held_out_families", "handwritten", "reference"}
    trained = {family_of(g) for g in sets["in_distribution"]}
    held_out = {family_of(g) for g in sets["held_out_families"]}
    assert held_out <= set(HELD_OUT_FAMILIES) and not trained & set(HELD_OUT_FAMILIES)
    assert len(sets["handwritten"]) == len(HANDWRITTEN)
    assert all(g.flops <= 20_000_000 and g.num_parameters <= 1_000_000
               for g in sets["in_distribution"] + sets["held_out_families"])
    # The same seeds give the same architectures: ground truth is cached by content hash.
    again = architecture_sets((1, 28, 28), 10, per_set=6)
    assert [g.content_hash() for g in again["held_out_families"]] == \
        [g.content_hash() for g in sets["held_out_families"]]


def test_the_baseline_costs_a_quarter_of_the_ground_truth():
    assert BASELINE.image_steps * 4 == GROUND_TRUTH.image_steps


def _record(i: int, truth: float | None) -> dict:
    return {"predicted_recalibrated": 0.1 * i, "predicted_readout": 0.2 * i,
            "ranking_head": 0.3 * i, "served_ranking_head": 0.25 * i, "grad_norm": float(i),
            "service_grad_norm": 1.5 * i, "synflow": math.nan,
            "naswot": -float(i), "zico": float(i), "parameters": 1000 * i,
            "sgd_baseline": 0.5, "trained_accuracy": truth,
            "seconds": {"predicted_readout": 1.0, "proxies": 0.5}}


def test_a_set_summary_ranks_every_score_against_the_ground_truth():
    records = [_record(i, 0.5 + 0.01 * i) for i in range(1, 7)] + [_record(9, None)]
    summary = summarize_set(records)
    assert summary["architectures"] == 7 and summary["with_ground_truth"] == 6
    ranking = summary["ranking"]
    assert set(ranking) == set(RANKED)
    assert ranking["predicted_readout"]["kendall_tau"] == 1.0
    assert ranking["naswot"]["kendall_tau"] == -1.0
    assert ranking["service_grad_norm"]["kendall_tau"] == 1.0
    assert ranking["sgd_baseline"]["kendall_tau"] is None  # constant: undefined
    assert ranking["synflow"]["kendall_tau"] is None  # failed everywhere: all tied last
    assert summary["mean"]["predicted_readout"] == sum(0.2 * i for i in (1, 2, 3, 4, 5, 6, 9)) / 7
    assert summary["seconds_per_architecture"]["ghn_score"] == 1.0


def test_results_are_brought_up_to_date_with_ground_truth_trained_since(tmp_path):
    sets = architecture_sets((1, 28, 28), 10, per_set=4)
    sets = {"in_distribution": sets["in_distribution"],
            "held_out_families": sets["held_out_families"]}
    task = SimpleNamespace(spec=SimpleNamespace(name="toy"), train=range(100))
    rows = {name: [{**_record(i + 1, None), "hash": g.content_hash(), "set": name}
                   for i, g in enumerate(graphs)] for name, graphs in sets.items()}
    cache = GroundTruthCache(tmp_path / "truth.json")
    before = summarize_generalization(rows, sets, task, cache, eval_images=100)
    assert before["sets"]["held_out_families"]["with_ground_truth"] == 0

    for i, graph in enumerate(sets["held_out_families"][:3]):  # trained since
        cache.put(GroundTruthCache.key(graph, task, GROUND_TRUTH.epochs, GROUND_TRUTH.images, 0,
                                       eval_images=2000), {"accuracy": 0.5 + 0.1 * i,
                                                           "seconds": 9.0})
    # The served head (fit elsewhere, on the GHN's own spaces): here it ranks by the score alone.
    served = RankingHead(weights=(1.0, 0.0), bias=0.5, mean=(0.5, 3.0), std=(1.0, 1.0),
                         low=(0.0, 0.0), high=(1.0, 9.0), l2=1.0, task="toy", target="toy",
                         architectures=39, ghn_sha256=None, score="predicted-readout")
    after = summarize_generalization(rows_by_set(before["architectures"]), sets, task,
                                     GroundTruthCache(tmp_path / "truth.json"), eval_images=100,
                                     served_head=served)
    summary = after["sets"]["held_out_families"]
    assert summary["with_ground_truth"] == 3
    assert summary["ranking"]["predicted_readout"]["kendall_tau"] == 1.0
    assert summary["ranking"]["served_ranking_head"]["kendall_tau"] == 1.0
    assert after["protocol"]["served_ranking_head"]["architectures"] == 39
    assert before["protocol"]["served_ranking_head"] is None
    assert summary["mean"]["trained_accuracy"] == pytest.approx(0.6)
    assert after["sets"]["in_distribution"]["with_ground_truth"] == 0

    rows["in_distribution"].reverse()  # scored in another order, or on other architectures
    with pytest.raises(ValueError, match="'in_distribution' is not the set of this checkout"):
        summarize_generalization(rows, sets, task, cache, eval_images=100)
