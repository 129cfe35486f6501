"""Does a GHN generalise beyond the architectures it was trained on? The logic of
``bench/generalization_bench.py``.

Architectures come in sets, each measured on its own (``docs/evaluation.md``):

- ``in_distribution``: seeds never trained on, from families the GHN was trained on;
- ``held_out_families``: families the GHN never saw in training (:data:`HELD_OUT_FAMILIES`);
- ``handwritten``: ordinary hand-written CNNs (:mod:`nas_service.zoo.handwritten`), written as
  ``torch.nn`` modules and converted with ``from_module``;
- ``reference``: the reference zoo (ResNet-18/50, MobileNetV2, DenseNet-BC, ...), whose
  predicted accuracy is reported but which are too large to train here for ground truth.

Each architecture gets the cheap scores a user could rank by, on the validation split: the GHN's
(recalibrated, and with the classifier refitted: the service's score), the zero-cost proxies of
:mod:`nas_service.scoring.proxies`, the parameter count, and a short SGD run
(:data:`BASELINE`); the ground truth is a longer SGD run (:data:`GROUND_TRUTH`) scored on the
test split. Ranking quality is Kendall's tau against it, per set; the ranking head is fit on the
``in_distribution`` set only and scored on the others, so its tau there is out of sample.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from nas_service.data import TaskData
from nas_service.ghn import GraphHyperNetwork
from nas_service.graph import ArchitectureGraph, from_module, to_module
from nas_service.scoring.metrics import compare_scores, kendall_tau
from nas_service.scoring.proxies import PROXIES, proxy_scores
from nas_service.scoring.ranking_head import MIN_ARCHITECTURES, RankingHead, fit_ranking_head
from nas_service.scoring.trainability import (
    GRAD_NORM_IMAGES,
    GRAD_NORM_SEED,
    grad_norm_batch,
    initial_grad_norm,
)
from nas_service.spaces import get_space
from nas_service.zoo import evaluation_models
from nas_service.zoo.handwritten import handwritten_models

from .evaluate import SERVICE_SCORE, evaluate_architecture
from .ranking import GroundTruthCache, ground_truth_records

HELD_OUT_FAMILIES = ("densenet", "inception", "convmixer")
"""Families of the ``families`` space a GHN is trained without, to be tested on: concatenation
of every earlier layer, parallel branches concatenated, patches mixed by depthwise convolutions.
"""
TRAINED_FAMILIES_SPACE = "families[" + ",".join(f"-{f}" for f in HELD_OUT_FAMILIES) + "]"
HELD_OUT_FAMILIES_SPACE = "families[" + ",".join(HELD_OUT_FAMILIES) + "]"


@dataclass(frozen=True)
class SgdBudget:
    """A run of :func:`~nas_service.training.evaluate.sgd_train`: ``epochs`` passes over
    ``images`` training images each (a fresh random draw per epoch)."""

    epochs: float
    images: int

    @property
    def image_steps(self) -> int:
        return int(self.epochs * self.images)

    def describe(self) -> str:
        return f"SGD, {self.epochs:g} epoch(s) of {self.images:,} training images"


GROUND_TRUTH = SgdBudget(epochs=4, images=8000)
"""What "trained accuracy" means here: 32,000 images' worth of SGD (cosine learning rate), the
most this 2-core CPU affords for about 70 networks."""
BASELINE = SgdBudget(epochs=1, images=8000)
"""The training baseline: a quarter of the ground truth's budget."""
SETS = ("in_distribution", "held_out_families", "handwritten", "reference")
OUT_OF_DISTRIBUTION = ("held_out_families", "handwritten")
SAMPLING_BOUNDS = {"max_parameters": 1_000_000, "max_flops": 20_000_000}
"""The bounds sampled architectures are drawn at: those the GHN is trained at."""
PROXY_BATCH = 128
"""Training images every zero-cost proxy reads: a batch that begins with the
:data:`~nas_service.scoring.trainability.GRAD_NORM_IMAGES` images of the service's gradient norm
(:func:`~nas_service.scoring.trainability.grad_norm_batch`)."""
SERVICE_GRAD_NORM = "service_grad_norm"
"""The record key of the gradient norm as the service takes it
(:func:`~nas_service.scoring.trainability.initial_grad_norm` on the first
:data:`~nas_service.scoring.trainability.GRAD_NORM_IMAGES` images of the proxies' batch): the
number a ranking head reads."""


def architecture_sets(input_shape: Sequence[int], num_classes: int, per_set: int = 30
                      ) -> dict[str, list[ArchitectureGraph]]:
    """The architectures of every set of :data:`SETS` for one task (``per_set`` sampled ones in
    each of the first two; seeds below the training seeds, never trained on)."""
    shape = tuple(int(s) for s in input_shape)

    def sampled(space: str) -> list[ArchitectureGraph]:
        return [get_space(space).sample(seed, shape, num_classes, **SAMPLING_BOUNDS)
                for seed in range(per_set)]

    def converted(factories: dict[str, Callable[[], nn.Module]]) -> list[ArchitectureGraph]:
        return [from_module(make().eval(), shape, name=name) for name, make in factories.items()]

    return {"in_distribution": sampled(TRAINED_FAMILIES_SPACE),
            "held_out_families": sampled(HELD_OUT_FAMILIES_SPACE),
            "handwritten": converted(handwritten_models(shape, num_classes)),
            "reference": converted(evaluation_models(shape, num_classes)[0])}


def train_ground_truth_sets(sets: dict[str, list[ArchitectureGraph]], task: TaskData,
                            cache: GroundTruthCache, *, device: str | torch.device | None = None,
                            progress: bool = True) -> None:
    """Trains the SGD baseline and the ground truth of every architecture of every set but
    ``reference`` into ``cache`` (resumable: what the cache holds is not trained again), one
    architecture at a time, smallest first, so an interrupted run leaves the most architectures
    complete."""
    graphs = sorted((g for name, gs in sets.items() if name != "reference" for g in gs),
                    key=lambda g: g.flops)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(graphs), desc="ground truth", unit="arch", dynamic_ncols=True)
    try:
        for graph in graphs:
            for budget, split in ((BASELINE, "val"), (GROUND_TRUTH, "test")):
                ground_truth_records([graph], task, budget.epochs, max_images=budget.images,
                                     cache=cache, split=split, eval_images=2000, device=device)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _score_architecture(ghn: GraphHyperNetwork, graph: ArchitectureGraph, task: TaskData,
                        proxy_batch: tuple[torch.Tensor, torch.Tensor], eval_images: int
                        ) -> dict[str, Any]:
    record = evaluate_architecture(ghn, graph, task, modes=("recalibrated",), random_init=False,
                                   sgd_epochs=None, split="val", eval_images=eval_images)
    t0 = time.perf_counter()
    torch.manual_seed(GRAD_NORM_SEED)  # as initial_grad_norm initialises
    net = to_module(graph, device=ghn.device)
    record.update(proxy_scores(net, *proxy_batch))
    record["seconds"]["proxies"] = time.perf_counter() - t0
    # The service's own computation, on the service's images: the first of the proxies' batch.
    record[SERVICE_GRAD_NORM] = initial_grad_norm(
        graph, *(t[:GRAD_NORM_IMAGES] for t in proxy_batch))
    return record


def evaluate_generalization(ghn: GraphHyperNetwork, task: TaskData,
                            sets: dict[str, list[ArchitectureGraph]], cache: GroundTruthCache,
                            *, eval_images: int = 1000, served_head: RankingHead | None = None,
                            ghn_sha256: str | None = None, progress: bool = True
                            ) -> dict[str, Any]:
    """Every score of every architecture, the ground truth the cache holds for it, and per set:
    the mean predicted accuracy and each score's agreement with the ground truth
    (:func:`~nas_service.scoring.metrics.compare_scores`). Architectures without ground truth
    in the cache are scored but left out of the rank comparisons. ``served_head`` is the
    ranking head served beside ``ghn`` (what searches rank by; see
    :func:`summarize_generalization`)."""
    proxy_batch = grad_norm_batch(task, ghn.device, images=PROXY_BATCH)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(g) for g in sets.values()), desc="generalization",
                   unit="arch", dynamic_ncols=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, graphs in sets.items():
            rows[name] = []
            for graph in graphs:
                record = _score_architecture(ghn, graph, task, proxy_batch, eval_images)
                record["set"] = name
                rows[name].append(record)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return summarize_generalization(rows, sets, task, cache, eval_images=eval_images,
                                    served_head=served_head, ghn_sha256=ghn_sha256)


def summarize_generalization(rows: dict[str, list[dict[str, Any]]],
                             sets: dict[str, list[ArchitectureGraph]], task: TaskData,
                             cache: GroundTruthCache, *, eval_images: int,
                             served_head: RankingHead | None = None,
                             ghn_sha256: str | None = None) -> dict[str, Any]:
    """The results of :func:`evaluate_generalization` from its scored ``rows`` (one list per
    set, in the order of ``sets``): the ground truth the cache holds now attached, the ranking
    head fit, every set summarised. Cheap, so results can be brought up to date when more
    ground truth has been trained, without scoring anything again.

    Two heads are ranked. ``ranking_head`` is fit here on the ``in_distribution`` set (the
    head a GHN trained on those families would ship). ``served_ranking_head`` is
    ``served_head``, the head served beside the scored GHN, which searches rank by: it was fit
    on trained architectures of the GHN's own training spaces, so on every set here it is
    measured out of sample (``None`` without one)."""
    for name, records in rows.items():
        graphs = sets[name]
        if [r["hash"] for r in records] != [g.content_hash() for g in graphs]:
            raise ValueError(f"the scored set {name!r} is not the set of this checkout "
                             f"({len(records)} scored, {len(graphs)} now)")
        for record, graph in zip(records, graphs, strict=True):
            for key, budget, split in (("trained_accuracy", GROUND_TRUTH, "test"),
                                       ("sgd_baseline", BASELINE, "val")):
                hit = cache.get(GroundTruthCache.key(graph, task, budget.epochs,
                                                     budget.images, 0, split=split,
                                                     eval_images=2000))
                record[key] = None if hit is None else hit["accuracy"]
                record["seconds"][key] = None if hit is None else hit["seconds"]
    head = _fit_head(rows.get("in_distribution", []), task, ghn_sha256, eval_images)
    for records in rows.values():
        for r in records:
            r["ranking_head"] = _estimate(head, r)
            r["served_ranking_head"] = _estimate(served_head, r)
    if head is not None:
        # The tau a served head quotes: measured on architectures it was not fit on, of
        # families the GHN was not trained on.
        unseen = [r for name in OUT_OF_DISTRIBUTION for r in rows.get(name, [])
                  if r.get("trained_accuracy") is not None]
        if len(unseen) >= 3:
            tau = kendall_tau([r["ranking_head"] for r in unseen],
                              [r["trained_accuracy"] for r in unseen])
            head = replace(head, kendall_tau=None if math.isnan(tau) else tau,
                           measured_on=f"{len(unseen)} architectures of families neither the "
                                       "head nor the GHN was fit on (held-out families, "
                                       "hand-written CNNs)")
    return {"protocol": {"ground_truth": GROUND_TRUTH.describe() + ", test split, 2,000 images",
                         "baseline": BASELINE.describe() + ", validation split, 2,000 images",
                         "eval_images": eval_images, "proxy_batch": PROXY_BATCH,
                         "held_out_families": list(HELD_OUT_FAMILIES),
                         "ranking_head": None if head is None else head.to_dict(),
                         "served_ranking_head": (None if served_head is None
                                                 else served_head.to_dict())},
            "sets": {name: summarize_set(records) for name, records in rows.items()},
            "architectures": [r for records in rows.values() for r in records]}


def rows_by_set(architectures: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ``architectures`` of a results file grouped by their ``set`` again, in order."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for record in architectures:
        rows.setdefault(record["set"], []).append(record)
    return rows


RANKED = ("predicted_recalibrated", "predicted_readout", "ranking_head", "served_ranking_head",
          *PROXIES, SERVICE_GRAD_NORM, "parameters", "sgd_baseline")


def summarize_set(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean predicted accuracies, and each score of :data:`RANKED` against the ground truth."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    out: dict[str, Any] = {"architectures": len(records),
                           "mean": {k: mean(k) for k in ("predicted_recalibrated",
                                                          "predicted_readout",
                                                          "trained_accuracy", "sgd_baseline")}}
    truth = [r for r in records if r.get("trained_accuracy") is not None]
    out["with_ground_truth"] = len(truth)
    ranks: dict[str, Any] = {}
    if len(truth) >= 3:
        t = [r["trained_accuracy"] for r in truth]
        for key in RANKED:
            if any(r.get(key) is None for r in truth):
                continue
            # A proxy that failed on a network ranks it last.
            values = [r[key] if math.isfinite(r[key]) else -math.inf for r in truth]
            floor = min((v for v in values if math.isfinite(v)), default=0.0) - 1.0
            ranks[key] = compare_scores(t, [v if math.isfinite(v) else floor for v in values])
    out["ranking"] = ranks
    out["seconds_per_architecture"] = {
        "ghn_score": mean_of(r["seconds"].get(SERVICE_SCORE) for r in records),
        "proxies": mean_of(r["seconds"].get("proxies") for r in records),
        "sgd_baseline": mean_of(r["seconds"].get("sgd_baseline") for r in records),
        "ground_truth": mean_of(r["seconds"].get("trained_accuracy") for r in records)}
    return out


def mean_of(values: Any) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


HEAD_FEATURES = ("surrogate_accuracy", "log10_grad_norm")
"""What the head fit on the in-distribution set reads (the head the bundled GHN ships): the
score and the gradient norm at initialisation. Chosen by leave-one-out Kendall τ on the 30
in-distribution networks alone (``bench/results/generalization_bench.json``): score + gradient
norm 0.63, score + size + gradient norm 0.59, score + size 0.32, size + gradient norm 0.31."""


def _estimate(head: RankingHead | None, record: dict[str, Any]) -> float | None:
    if head is None:
        return None
    return head.predict(record[SERVICE_SCORE], record["parameters"],
                        record.get(SERVICE_GRAD_NORM) if head.uses_grad_norm else None)


def _fit_head(records: Sequence[dict[str, Any]], task: TaskData, ghn_sha256: str | None,
              eval_images: int) -> RankingHead | None:
    trained = [r for r in records if r.get("trained_accuracy") is not None]
    if len(trained) < MIN_ARCHITECTURES:
        return None
    return fit_ranking_head([r[SERVICE_SCORE] for r in trained],
                            [r["parameters"] for r in trained],
                            [r["trained_accuracy"] for r in trained], task=task.spec.name,
                            target=f"test accuracy after {GROUND_TRUTH.describe()}",
                            grad_norm=[r[SERVICE_GRAD_NORM] for r in trained],
                            features=HEAD_FEATURES,
                            ghn_sha256=ghn_sha256, eval_images=eval_images,
                            measured_on=f"{len(trained)} in-distribution architectures "
                                        "(leave-one-out)")
