"""Does a cheap score rank architectures as training would? The logic of ``nas-service rank-ghn``.

Protocol (``docs/evaluation.md``): the GHN's held-out architectures are trained from scratch with
plain SGD (:func:`~nas_service.training.evaluate.sgd_train`) and scored on the **test** split:
that is the ground truth. Every cheap score is computed on the **validation** split (the one the
service ranks candidates on): predicted accuracy in both batch-norm modes, parameter count,
FLOPs, accuracy after one epoch of SGD, accuracy at random initialisation. Agreement with the
ground truth is reported as Kendall's tau-b and Spearman's rho, plus where the score's favourite
lands in the true ranking, and what the score costs per architecture.

Training is the slow part, so its results go to a :class:`GroundTruthCache`, written after each
architecture: an interrupted run resumes where it stopped, and a rerun with a new GHN trains
nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nas_service.data import TaskData, load_task
from nas_service.ghn import GraphHyperNetwork, UnsupportedArchitectureError
from nas_service.ghn.checkpoint import resolve_device
from nas_service.graph import ArchitectureGraph
from nas_service.scoring.evaluation import accuracy
from nas_service.scoring.metrics import compare_scores
from nas_service.scoring.protocol import READOUT, score_name
from nas_service.scoring.ranking_head import (
    MIN_ARCHITECTURES,
    RankingHead,
    fit_ranking_head,
    leave_one_out,
)
from nas_service.scoring.trainability import grad_norm_batch, initial_grad_norm

from .evaluate import (
    EVAL_BATCH_SIZE,
    SERVICE_SCORE,
    SGD_BATCH_SIZE,
    SGD_LR,
    describe_ghn,
    evaluate_architecture,
    evaluation_tensors,
    sgd_train,
    training_config_of,
)
from .ghn_training import held_out_architectures

RANKED_SCORES = ("predicted_batch", "predicted_recalibrated", "predicted_readout",
                 "ranking_head", "served_ranking_head", "parameters",
                 "flops", "sgd_1_epoch", "random_init")
"""The cheap scores :func:`rank_surrogates` compares with the ground truth; higher is taken to
mean better for every one of them (more parameters, more FLOPs, higher accuracy).
``ranking_head`` is the :mod:`~nas_service.scoring.ranking_head` estimate of each architecture
by a head fit on all the *other* ranked architectures (leave-one-out), so its agreement is a
test score, not a fit. ``served_ranking_head`` is the estimate of the head served beside the
GHN (what searches rank by), when one is given: fit elsewhere, so also a test score."""


# ------------------------------------------------------------------------------------------------
# Ground truth, cached
# ------------------------------------------------------------------------------------------------


class GroundTruthCache:
    """Trained accuracies by architecture and protocol, in one JSON file.

    The file maps :meth:`key` strings to ``{"accuracy", "seconds", "name"}``. Guarantees:

    * every :meth:`put` rewrites the file atomically (temporary file, ``fsync``, rename), so a
      crash leaves the previous or the new version, never half a file;
    * :meth:`put` merges what is on disk under an exclusive lock (``<file>.lock``), so several
      processes sharing a file (say, shards of :func:`train_ground_truth`) keep each other's
      results.

    A file that is not a JSON object raises ``ValueError`` rather than being overwritten.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"ground-truth cache {self.path} is unreadable: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"ground-truth cache {self.path} is not a JSON object")
        return data

    @staticmethod
    def key(graph: ArchitectureGraph, task_data: TaskData, epochs: float,
            max_images: int | None, seed: int, *, split: str = "test",
            eval_images: int | None = None) -> str:
        """``"<graph content hash>|<task>|<epochs>|<max_images>|<seed>"`` with ``<task>`` the
        task's name and training-split size (``fashion-mnist/55000``: a run on a subset of the
        training images is another experiment) and ``<max_images>`` ``all`` for ``None``;
        ``|<split>`` and ``|eval=<n>`` are appended when the accuracy is not on the full test
        split. Everything else of the protocol (batch 128, lr 0.05, ...) is fixed."""
        parts = [graph.content_hash(), f"{task_data.spec.name}/{len(task_data.train)}",
                 f"{float(epochs):g}", "all" if max_images is None else str(max_images),
                 str(seed)]
        if split != "test":
            parts.append(split)
        if eval_images is not None:
            parts.append(f"eval={eval_images}")
        return "|".join(parts)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            merged = self._read()
            merged.update(self._entries)
            merged[key] = record
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name,
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(merged, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._entries = merged

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def ground_truth(graphs: Sequence[ArchitectureGraph], task_data: TaskData, epochs: float, *,
                 max_images: int | None = None, seed: int = 0,
                 cache: GroundTruthCache | None = None, split: str = "test",
                 eval_images: int | None = None, device: str | torch.device | None = None,
                 progress: bool = False,
                 on_trained: Callable[[int, dict[str, Any]], None] | None = None) -> list[float]:
    """Accuracy on ``split`` (its first ``eval_images`` images; all when ``None``) of each graph
    after :func:`sgd_train` (``epochs``, ``max_images``, ``seed``), in the order of ``graphs``.

    Only architectures missing from ``cache`` are trained; each result is written to the cache
    before the next one starts, then ``on_trained(index, record)`` is called (an exception from
    it stops the run with everything so far saved).
    """
    records = ground_truth_records(graphs, task_data, epochs, max_images=max_images, seed=seed,
                                   cache=cache, split=split, eval_images=eval_images,
                                   device=device, progress=progress, on_trained=on_trained)
    return [r["accuracy"] for r in records]


def ground_truth_records(graphs: Sequence[ArchitectureGraph], task_data: TaskData,
                         epochs: float, *, max_images: int | None = None, seed: int = 0,
                         cache: GroundTruthCache | None = None, split: str = "test",
                         eval_images: int | None = None,
                         device: str | torch.device | None = None, progress: bool = False,
                         on_trained: Callable[[int, dict[str, Any]], None] | None = None
                         ) -> list[dict[str, Any]]:
    """:func:`ground_truth` with whole records: ``{"accuracy", "seconds" (training and scoring),
    "name", "cached"}``."""
    dev = resolve_device(device)
    x = y = None
    out: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(graphs), desc=f"train {float(epochs):g} epochs ({split})",
                   unit="arch", dynamic_ncols=True)
    try:
        for i, graph in enumerate(graphs):
            key = GroundTruthCache.key(graph, task_data, epochs, max_images, seed, split=split,
                                       eval_images=eval_images)
            record = cache.get(key) if cache is not None else None
            if record is not None:
                record = {**record, "cached": True}
            else:
                if x is None:
                    x, y = evaluation_tensors(task_data, split, eval_images, dev)
                t0 = time.perf_counter()
                net = sgd_train(graph, task_data, epochs=epochs, max_images=max_images,
                                seed=seed, device=dev)
                acc = accuracy(net, x, y, "recalibrated", EVAL_BATCH_SIZE)
                record = {"accuracy": acc, "seconds": time.perf_counter() - t0,
                          "name": graph.name}
                if cache is not None:
                    cache.put(key, record)
                record = {**record, "cached": False}
                if on_trained is not None:
                    on_trained(i, record)
            out.append(record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def train_ground_truth(ghn: GraphHyperNetwork, task: str | TaskData = "fashion-mnist", *,
                       cache_path: str | os.PathLike, held_out: int = 50, epochs: float = 5.0,
                       max_images: int | None = None, sgd_epochs_baseline: float | None = 1.0,
                       sgd_max_images: int | None = None, eval_images: int | None = None,
                       truth_eval_images: int | None = None, seed: int = 0,
                       shard: tuple[int, int] = (0, 1), data_root: str | None = None,
                       device: str | torch.device | None = None,
                       progress: bool = True,
                       spaces: Sequence[str] | None = None) -> dict[str, Any]:
    """Only the training part of :func:`rank_surrogates`, for one shard of the held-out set:
    architecture ``i`` belongs to shard ``i % count``. Several processes (or machines sharing
    the cache file) each take one shard; :func:`rank_surrogates` with the same arguments and
    ``cache_path`` then trains nothing. Per architecture: the ground truth, then the SGD
    baseline. Returns ``{"shard", "architectures", "trained", "seconds"}``."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    data = task if isinstance(task, TaskData) else load_task(task, data_root)
    cfg = training_config_of(ghn, spaces)
    graphs = held_out_architectures(cfg, held_out, data.spec.input_shape, data.spec.num_classes)
    mine = [g for i, g in enumerate(graphs) if i % count == index]
    cache = GroundTruthCache(cache_path)
    dev = resolve_device(device)
    trained, t0 = 0, time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc=f"ground truth, shard {index}/{count}", unit="arch",
                   dynamic_ncols=True)
    try:
        for graph in mine:
            runs = [dict(epochs=epochs, max_images=max_images, eval_images=truth_eval_images)]
            if sgd_epochs_baseline is not None:
                runs.append(dict(epochs=sgd_epochs_baseline, max_images=sgd_max_images,
                                 split="val", eval_images=eval_images))
            for run in runs:
                record, = ground_truth_records([graph], data, seed=seed, cache=cache,
                                               device=dev, **run)
                trained += not record["cached"]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"shard": [index, count], "architectures": len(mine), "trained": trained,
            "seconds": time.perf_counter() - t0}


def rank_surrogates(ghn: GraphHyperNetwork, task: str | TaskData = "fashion-mnist", *,
                    held_out: int = 50, epochs: float = 5.0, max_images: int | None = None,
                    cache_path: str | os.PathLike | None = None,
                    sgd_epochs_baseline: float | None = 1.0,
                    sgd_max_images: int | None = None, eval_images: int | None = None,
                    truth_eval_images: int | None = None, seed: int = 0,
                    data_root: str | None = None, progress: bool = True,
                    cached_only: bool = False, ghn_sha256: str | None = None,
                    spaces: Sequence[str] | None = None,
                    served_head: RankingHead | None = None) -> dict[str, Any]:
    """Ranks the GHN's held-out architectures by each cheap score and by training; compares.

    The held-out architectures come from the spaces the GHN was trained on, or from ``spaces``
    (the same seeds), so GHNs trained on different spaces are ranked on one set.

    ``cached_only``: compare on the architectures whose ground truth (and SGD baseline) the
    cache already holds, training nothing (e.g. after a time-boxed :func:`train_ground_truth`).

    Ground truth: accuracy on the test split (its first ``truth_eval_images`` images; all when
    ``None``) after ``epochs`` of SGD on at most ``max_images`` training images per epoch
    (cached in ``cache_path`` when given). Cheap scores, on the first
    ``eval_images`` validation images: see :data:`RANKED_SCORES`; the SGD baseline runs
    ``sgd_epochs_baseline`` epochs on at most ``sgd_max_images`` images per epoch (cached too;
    ``None`` leaves it out). Architectures the GHN cannot predict are left out of the comparison
    (listed in ``excluded``).

    Returns ``{"kind": "ranking", "task", "ghn": describe_ghn(ghn), "protocol", "architectures":
    [{"name", "seed", "hash", "trained_accuracy", "trained_seconds", <score>: value, ...}],
    "excluded": [{"name", "error"}], "scores": {<score>: compare_scores(...) +
    {"seconds_per_architecture"}}, "ground_truth": {"best", "mean", "seconds_per_architecture"}}``.
    Parameter and FLOP counts cost what validating the graph document costs.
    """
    data = task if isinstance(task, TaskData) else load_task(task, data_root)
    spec = data.spec
    dev = ghn.device
    cfg = training_config_of(ghn, spaces)
    graphs = held_out_architectures(cfg, held_out, spec.input_shape, spec.num_classes)
    cache = GroundTruthCache(cache_path) if cache_path is not None else None
    if cached_only:
        if cache is None:
            raise ValueError("cached_only needs a cache_path")

        def trained(g: ArchitectureGraph) -> bool:
            keys = [GroundTruthCache.key(g, data, epochs, max_images, seed,
                                         eval_images=truth_eval_images)]
            if sgd_epochs_baseline is not None:
                keys.append(GroundTruthCache.key(g, data, sgd_epochs_baseline, sgd_max_images,
                                                 seed, split="val", eval_images=eval_images))
            return all(k in cache for k in keys)

        seeds = [i for i, g in enumerate(graphs) if trained(g)]
    else:
        seeds = list(range(len(graphs)))

    gradient_batch = (grad_norm_batch(data, dev)
                      if served_head is not None and served_head.uses_grad_norm else None)
    rows: list[dict[str, Any]] = []
    kept: list[ArchitectureGraph] = []
    excluded: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), desc="cheap scores", unit="arch", dynamic_ncols=True)
    try:
        for i in seeds:
            graph = graphs[i]
            name = graph.name or f"held-out-{i}"
            try:
                r = evaluate_architecture(ghn, graph, data, split="val", eval_images=eval_images,
                                          sgd_epochs=None, seed=seed)
            except UnsupportedArchitectureError as e:
                excluded.append({"name": name, "seed": i, "error": str(e)})
                continue
            finally:
                if bar is not None:
                    bar.update(1)
            t0 = time.perf_counter()
            ArchitectureGraph.from_dict(graph.to_dict())
            counting = time.perf_counter() - t0
            r["seconds"].update(parameters=counting, flops=counting)
            r.update(name=name, seed=i)
            if served_head is not None:
                t0 = time.perf_counter()
                gradient = (None if gradient_batch is None
                            else initial_grad_norm(graph, *gradient_batch))
                r["served_ranking_head"] = served_head.predict(r[SERVICE_SCORE],
                                                               r["parameters"], gradient)
                r["seconds"]["served_ranking_head"] = (r["seconds"][SERVICE_SCORE]
                                                       + time.perf_counter() - t0)
            rows.append(r)
            kept.append(graph)
    finally:
        if bar is not None:
            bar.close()

    if sgd_epochs_baseline is not None:
        baseline = ground_truth_records(
            kept, data, sgd_epochs_baseline, max_images=sgd_max_images, seed=seed, cache=cache,
            split="val", eval_images=eval_images, device=dev, progress=progress)
        for row, rec in zip(rows, baseline, strict=True):
            row["sgd_1_epoch"] = rec["accuracy"]
            row["seconds"]["sgd_1_epoch"] = rec["seconds"]

    truth_records = ground_truth_records(
        kept, data, epochs, max_images=max_images, seed=seed, cache=cache,
        eval_images=truth_eval_images, device=dev, progress=progress)
    truth = [rec["accuracy"] for rec in truth_records]
    for row, rec in zip(rows, truth_records, strict=True):
        row["trained_accuracy"], row["trained_seconds"] = rec["accuracy"], rec["seconds"]
    trained_seconds = [rec["seconds"] for rec in truth_records]

    head = None
    if len(rows) >= MIN_ARCHITECTURES:
        surrogate = [float(r[SERVICE_SCORE]) for r in rows]
        parameters = [float(r["parameters"]) for r in rows]
        for row, estimate in zip(rows, leave_one_out(surrogate, parameters, truth), strict=True):
            row["ranking_head"] = estimate
            # Its cost is the surrogate's: the head itself is a dot product.
            row["seconds"]["ranking_head"] = row["seconds"][SERVICE_SCORE]
        head = fit_ranking_head(surrogate, parameters, truth, task=spec.name,
                                score=score_name(READOUT),
                                target=f"test accuracy after {epochs:g} epochs of SGD",
                                ghn_sha256=ghn_sha256, eval_images=eval_images)

    scores: dict[str, Any] = {}
    for name in RANKED_SCORES:
        if not rows or rows[0].get(name) is None:
            continue
        values = [float(r[name]) for r in rows]
        scores[name] = compare_scores(truth, values)
        scores[name]["seconds_per_architecture"] = statistics.fmean(
            r["seconds"][name] for r in rows)

    architectures = [
        {k: r.get(k) for k in ("name", "seed", "hash", "parameters", "flops", "nodes",
                               "trained_accuracy", "trained_seconds", "predicted_batch",
                               "predicted_recalibrated", "predicted_readout", "ranking_head",
                               "served_ranking_head", "sgd_1_epoch",
                               "random_init")}
        for r in rows]
    return {
        "kind": "ranking", "task": spec.name, "ghn": describe_ghn(ghn),
        "protocol": {"held_out": held_out, "cached_only": cached_only,
                     "epochs": epochs, "max_images": max_images,
                     "truth_split": "test", "truth_eval_images": truth_eval_images,
                     "score_split": "val", "eval_images": eval_images,
                     "sgd_epochs_baseline": sgd_epochs_baseline,
                     "sgd_max_images": sgd_max_images, "seed": seed,
                     "batch_size": SGD_BATCH_SIZE, "lr": SGD_LR, "spaces": list(cfg.spaces),
                     "device": str(dev)},
        "architectures": architectures, "excluded": excluded, "scores": scores,
        "ranking_head": head.to_dict() if head is not None else None,
        "ground_truth": {
            "best": max(truth) if truth else None,
            "mean": statistics.fmean(truth) if truth else None,
            "seconds_per_architecture": statistics.fmean(trained_seconds)
            if trained_seconds else None},
    }
