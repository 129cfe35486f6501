"""How good are a GHN's predicted parameters? The scores behind ``nas-service evaluate-ghn``.

Each architecture gets five accuracies on one split of the task (``docs/evaluation.md``):

* ``predicted_batch`` — GHN-predicted parameters, batch norm with each batch's own statistics
  (GHN-2's protocol);
* ``predicted_recalibrated`` — the same parameters, running statistics re-estimated on
  :data:`RECALIBRATION_BATCHES` training batches of :data:`RECALIBRATION_BATCH_SIZE`, then
  ``eval()`` mode;
* ``predicted_readout`` — the recalibrated network with its classifier refitted on the labelled
  recalibration images (:func:`~nas_service.scoring.evaluation.fit_readout`): the service's
  score (:data:`SERVICE_SCORE`), what a user of the downloaded network gets;
* ``random_init`` — PyTorch's default initialisation (batch statistics): the floor;
* ``sgd_1_epoch`` — the same random initialisation after ``sgd_epochs`` of plain SGD
  (:func:`sgd_train`): what the GHN's one forward pass competes with.

Architectures are the GHN's held-out set (search-space seeds never trained on, see
:func:`~nas_service.training.ghn_training.held_out_architectures`) and the hand-written
reference models of :mod:`nas_service.zoo`, converted with ``from_module``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from nas_service.data import TaskData, load_task, random_crop_flip
from nas_service.ghn import GraphHyperNetwork, UnsupportedArchitectureError
from nas_service.ghn.checkpoint import resolve_device
from nas_service.graph import (
    ArchitectureGraph,
    GraphValidationError,
    UnsupportedModuleError,
    from_module,
    to_module,
)
from nas_service.scoring.evaluation import (
    accuracy,
    fit_readout,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from nas_service.scoring.protocol import (
    READOUT,
    RECALIBRATION_BATCH_SIZE,
    RECALIBRATION_BATCHES,
    SGD_BATCH_SIZE,
    SGD_LR,
    SGD_MOMENTUM,
    SGD_WEIGHT_DECAY,
    BatchNormMode,
)
from nas_service.scoring.short_training import sgd_optimizer, sgd_step
from nas_service.scoring.surrogate import as_graph
from nas_service.scoring.trainability import even_batch_size

from .config import TrainingConfig
from .ghn_training import held_out_architectures

SCORES = ("predicted_batch", "predicted_recalibrated", "predicted_readout", "random_init",
          "sgd_1_epoch")
"""The accuracy keys of one :func:`evaluate_architecture` record, cheapest first."""
SERVICE_SCORE = "predicted_readout" if READOUT else "predicted_recalibrated"
"""The key of the score the service reports (:mod:`nas_service.scoring.protocol`)."""

EVAL_BATCH_SIZE = 250
"""Images per forward pass when scoring: small enough for ResNet-50 at 32x32 on a CPU."""



# ------------------------------------------------------------------------------------------------
# Plain SGD, the baseline and the ground truth
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seeds torch's global generators for the block and restores them afterwards, so that
    initialisation and dropout are reproducible without disturbing the caller's randomness."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sgd_train(graph_or_module: ArchitectureGraph | nn.Module, task_data: TaskData, *,
              epochs: float, batch_size: int = SGD_BATCH_SIZE, lr: float = SGD_LR,
              momentum: float = SGD_MOMENTUM, weight_decay: float = SGD_WEIGHT_DECAY,
              seed: int = 0,
              max_images: int | None = None, augment: bool = False,
              device: str | torch.device | None = None, progress: bool = False,
              on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Trains a network with plain SGD on the task's training split; returns it in eval mode.

    ``on_epoch(epoch, net)`` is called after each whole epoch (1, 2, ...) with the network in
    eval mode (it goes back to training mode after), e.g. to measure its accuracy.

    A graph is built with ``to_module`` under ``torch.manual_seed(seed)`` (PyTorch's default
    initialisation, the same one :func:`evaluate_architecture` scores as ``random_init``); a
    module is deep-copied and trained from the parameters it holds. The caller's random state is
    left untouched.

    Protocol (each step :func:`~nas_service.scoring.short_training.sgd_step`): nesterov SGD
    (``momentum``, ``weight_decay`` on every parameter), learning rate ``lr`` decayed per step
    by a cosine to 0, cross-entropy, gradient norm clipped at
    :data:`~nas_service.scoring.protocol.SGD_GRAD_CLIP`. An epoch is one pass over
    ``max_images`` images (all of them when ``None``) drawn by a fresh seeded shuffle, in full
    batches of ``min(batch_size, images)`` (one fewer where that is odd and above 1: see
    :mod:`nas_service.scoring.trainability`); ``epochs`` may be fractional (``0.1`` runs a
    tenth of an epoch's steps, at least one step; ``0`` trains nothing). Training stops early
    (within 25 steps) once the loss is non-finite.
    """
    if epochs < 0 or not math.isfinite(epochs):
        raise ValueError(f"epochs must be a finite number >= 0, got {epochs!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images!r}")
    dev = resolve_device(device)
    train = task_data.split("train")
    per_epoch = len(train) if max_images is None else min(len(train), max_images)
    bs = even_batch_size(min(batch_size, per_epoch), minimum=1)
    steps_per_epoch = per_epoch // bs
    total = 0 if epochs == 0 else max(1, math.ceil(epochs * steps_per_epoch))

    with _seeded(seed, dev):
        if isinstance(graph_or_module, ArchitectureGraph):
            net: nn.Module = to_module(graph_or_module, device=dev)
        elif isinstance(graph_or_module, nn.Module):
            net = copy.deepcopy(graph_or_module).to(dev)
        else:
            raise TypeError("expected an ArchitectureGraph or a torch.nn.Module, got "
                            f"{type(graph_or_module).__name__}")
        params = [p for p in net.parameters() if p.requires_grad]
        if total == 0 or not params:
            return net.eval()
        opt = sgd_optimizer(params, lr, momentum, weight_decay)
        shuffle = torch.Generator().manual_seed(seed)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="sgd", unit="step", leave=False, dynamic_ncols=True)
        net.train()
        step = 0
        # The split and each epoch's order go to the device once: a host-to-device copy per
        # step would make the CPU wait for the GPU at every step.
        images, labels = train.images.to(dev), train.labels.to(dev)
        finite = torch.ones((), dtype=torch.bool, device=dev)
        try:
            while step < total:
                order = torch.randperm(len(train), generator=shuffle)[:per_epoch].to(dev)
                for b in range(steps_per_epoch):
                    if step >= total:
                        break
                    idx = order[b * bs:(b + 1) * bs]
                    x = images.index_select(0, idx)
                    if augment:
                        x = random_crop_flip(x, task_data.spec.augment_pad,
                                             task_data.spec.augment_flip, shuffle)
                    x, y = task_data.normalize(x), labels.index_select(0, idx)
                    if not sgd_step(net, params, opt, x, y, step=step, total=total, lr=lr,
                                    finite=finite):
                        return net.eval()
                    step += 1
                    if bar is not None:
                        bar.update(1)
                    if on_epoch is not None and step % steps_per_epoch == 0:
                        net.eval()
                        on_epoch(step // steps_per_epoch, net)
                        net.train()
        finally:
            if bar is not None:
                bar.close()
    return net.eval()


# ------------------------------------------------------------------------------------------------
# One architecture
# ------------------------------------------------------------------------------------------------


def evaluation_tensors(task_data: TaskData, split: str, eval_images: int | None,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``eval_images`` images of ``split`` (all when ``None``), normalised."""
    s = task_data.split(split)
    n = len(s) if eval_images is None else min(len(s), eval_images)
    x = task_data.normalize(s.images[:n].to(device))
    return x, s.labels[:n].to(device, copy=True)


def evaluate_architecture(ghn: GraphHyperNetwork, graph: ArchitectureGraph | nn.Module,
                          task_data: TaskData, *,
                          modes: Sequence[BatchNormMode] = ("batch", "recalibrated"),
                          random_init: bool = True, sgd_epochs: float | None = 1.0,
                          sgd_max_images: int | None = None, split: str = "test",
                          eval_images: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Scores one architecture every way this module knows, on the GHN's device.

    Returns a JSON-ready dict: ``name``, ``hash`` (content hash), ``parameters``, ``flops``
    (multiply-accumulates), ``nodes``; the accuracies ``predicted_batch``,
    ``predicted_recalibrated``, ``predicted_readout`` (with ``"recalibrated"`` in ``modes``),
    ``random_init`` and ``sgd_1_epoch`` (each in ``[0, 1]``, or ``None`` when not requested: a
    mode missing from ``modes``, ``random_init=False``,
    ``sgd_epochs=None``); ``sgd_epochs``; ``predict_seconds`` (the GHN's forward pass) and
    ``sgd_seconds`` (training only); ``seconds``, the full cost of each score (predicting or
    training, recalibrating, and scoring); ``split`` and ``eval_images`` (images scored).

    ``random_init`` and ``sgd_1_epoch`` start from the same seeded initialisation. A module is
    converted with ``from_module`` at the task's input shape. Raises
    :class:`~nas_service.ghn.UnsupportedArchitectureError` if the GHN cannot predict ``graph``.
    """
    unknown = set(modes) - {"batch", "recalibrated"}
    if unknown:
        raise ValueError(f"unknown batch-norm modes {sorted(unknown)}")
    dev = ghn.device
    graph = as_graph(graph, task_data.spec.input_shape)
    x, y = evaluation_tensors(task_data, split, eval_images, dev)
    record: dict[str, Any] = {
        "name": graph.name or graph.content_hash()[:12], "hash": graph.content_hash(),
        "parameters": graph.num_parameters, "flops": graph.flops, "nodes": len(graph.nodes),
        **dict.fromkeys(SCORES), "sgd_epochs": sgd_epochs, "predict_seconds": None,
        "sgd_seconds": None, "seconds": {}, "split": split, "eval_images": len(y)}

    if modes:
        t0 = time.perf_counter()
        with torch.no_grad():
            params = ghn.predict([graph])[0]
        _synchronize(dev)
        predict = record["predict_seconds"] = time.perf_counter() - t0
        # initialize=False: every parameter is overwritten next, and random init is most of
        # the cost of building a large network.
        net = load_parameters(to_module(graph, initialize=False, device=dev), params)
        if "batch" in modes:
            t0 = time.perf_counter()
            record["predicted_batch"] = accuracy(net, x, y, "batch", EVAL_BATCH_SIZE)
            record["seconds"]["predicted_batch"] = predict + time.perf_counter() - t0
        if "recalibrated" in modes:
            t0 = time.perf_counter()
            images, labels = zip(*recalibration_batches(task_data, dev), strict=True)
            recalibrate(net, images)
            record["predicted_recalibrated"] = accuracy(net, x, y, "recalibrated",
                                                        EVAL_BATCH_SIZE)
            seconds = record["seconds"]["predicted_recalibrated"] = (
                predict + time.perf_counter() - t0)
            t0 = time.perf_counter()
            fit_readout(net, torch.cat(images), torch.cat(labels))
            record["predicted_readout"] = accuracy(net, x, y, "recalibrated", EVAL_BATCH_SIZE)
            record["seconds"]["predicted_readout"] = seconds + time.perf_counter() - t0
        del net, params

    if random_init:
        t0 = time.perf_counter()
        with _seeded(seed, dev):
            net = to_module(graph, device=dev)
        record["random_init"] = accuracy(net, x, y, "batch", EVAL_BATCH_SIZE)
        record["seconds"]["random_init"] = time.perf_counter() - t0
        del net

    if sgd_epochs is not None:
        t0 = time.perf_counter()
        net = sgd_train(graph, task_data, epochs=sgd_epochs, max_images=sgd_max_images,
                        seed=seed, device=dev)
        _synchronize(dev)
        record["sgd_seconds"] = time.perf_counter() - t0
        # Running statistics come from training, so eval mode is the honest score.
        record["sgd_1_epoch"] = accuracy(net, x, y, "recalibrated", EVAL_BATCH_SIZE)
        record["seconds"]["sgd_1_epoch"] = time.perf_counter() - t0
    return record


# ------------------------------------------------------------------------------------------------
# A whole GHN
# ------------------------------------------------------------------------------------------------


def training_config_of(ghn: GraphHyperNetwork,
                       spaces: Sequence[str] | None = None) -> TrainingConfig:
    """The :class:`TrainingConfig` the GHN was trained with, as far as its checkpoint records
    it (``ghn.training_record["config"]``); defaults for whatever is missing. ``spaces``
    replaces the recorded spaces: held-out architectures drawn from other spaces (the same
    seeds), e.g. to compare GHNs trained on different spaces on one set."""
    recorded = (getattr(ghn, "training_record", None) or {}).get("config") or {}
    known = {f.name for f in fields(TrainingConfig)}
    kwargs = {k: v for k, v in recorded.items() if k in known}
    if "spaces" in kwargs:  # a JSON list in the checkpoint
        kwargs["spaces"] = tuple(kwargs["spaces"])
    if spaces is not None:
        kwargs["spaces"] = tuple(spaces)
    return TrainingConfig(**kwargs)


def describe_ghn(ghn: GraphHyperNetwork) -> dict[str, Any]:
    """A JSON-ready summary of a GHN and of its training record."""
    record = getattr(ghn, "training_record", None) or {}
    config = asdict(ghn.config)
    config["ops"] = len(config["ops"])
    return {"task": getattr(ghn, "task", None), "step": record.get("step"),
            "best_val_accuracy": record.get("best_val_accuracy"),
            "parameters": sum(p.numel() for p in ghn.parameters()), "config": config,
            "training_config": record.get("config")}


def summarize(records: Sequence[dict[str, Any]], keys: Sequence[str] = SCORES
              ) -> dict[str, dict[str, float | int] | None]:
    """``{key: {"mean", "median", "min", "max", "count"}}`` over the records that have a value
    (errors and unrequested scores are left out); ``None`` for a key no record has."""
    out: dict[str, dict[str, float | int] | None] = {}
    for key in keys:
        values = [r[key] for r in records if r.get(key) is not None]
        out[key] = None if not values else {
            "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values), "count": len(values)}
    return out


def _load(task: str | TaskData, data_root: str | None) -> TaskData:
    return task if isinstance(task, TaskData) else load_task(task, data_root)


def evaluate_ghn(ghn: GraphHyperNetwork, task: str | TaskData = "fashion-mnist", *,
                 held_out: int = 50, zoo: bool = True, sgd_epochs: float | None = 1.0,
                 sgd_max_images: int | None = None, eval_images: int | None = None,
                 data_root: str | None = None, progress: bool = True,
                 on_result: Callable[[str, dict[str, Any]], None] | None = None,
                 seed: int = 0, spaces: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores a GHN on its held-out architectures and on the reference models (test split).

    Held-out architectures are ``held_out_architectures(cfg, held_out, ...)`` with ``cfg`` the
    GHN's recorded training configuration (:func:`training_config_of`; its spaces replaced by
    ``spaces`` when given), sampled at the task's input shape. With ``zoo`` the models of :func:`nas_service.zoo.evaluation_models` are added
    (those that cannot take the input are listed in ``zoo_skipped`` with the reason).

    Returns ``{"kind": "evaluation", "task", "split", "ghn": describe_ghn(ghn), "settings",
    "held_out": [record], "zoo": [record], "zoo_skipped": {name: reason}, "summary":
    {"held_out": summarize(held_out), "held_out_by_batch_norm": {"with": ..., "without": ...},
    "held_out_seconds": ..., "zoo": {name: {score: value}}}}`` where each record is
    :func:`evaluate_architecture`'s (held-out ones also say whether they have ``batch_norm``). An
    architecture that fails (the GHN cannot predict it, a model cannot be converted) gets
    ``{"name", "error"}`` instead, and the evaluation goes on. ``on_result(section, record)`` is
    called after each architecture (``section`` is ``"held_out"`` or ``"zoo"``).
    """
    from nas_service.zoo import evaluation_models

    data = _load(task, data_root)
    spec = data.spec
    cfg = training_config_of(ghn, spaces)
    graphs = held_out_architectures(cfg, held_out, spec.input_shape, spec.num_classes)
    factories, skipped = evaluation_models(spec.input_shape, spec.num_classes) if zoo else ({}, {})
    kwargs = {"sgd_epochs": sgd_epochs, "sgd_max_images": sgd_max_images, "split": "test",
              "eval_images": eval_images, "seed": seed}
    result: dict[str, Any] = {
        "kind": "evaluation", "task": spec.name, "split": "test", "ghn": describe_ghn(ghn),
        "settings": {"held_out": held_out, "zoo": zoo, "sgd_epochs": sgd_epochs,
                     "sgd_max_images": sgd_max_images, "eval_images": eval_images,
                     "seed": seed, "spaces": list(cfg.spaces),
                     "max_parameters": cfg.max_parameters, "max_flops": cfg.max_flops,
                     "recalibration": f"{RECALIBRATION_BATCHES} x {RECALIBRATION_BATCH_SIZE} "
                                      "training images", "device": str(ghn.device)},
        "held_out": [], "zoo": [], "zoo_skipped": skipped}

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(graphs) + len(factories), desc="evaluate-ghn", unit="arch",
                   dynamic_ncols=True)

    def done(section: str, record: dict[str, Any]) -> None:
        result[section].append(record)
        if bar is not None:
            bar.set_postfix_str(str(record.get("name")))
            bar.update(1)
        if on_result is not None:
            on_result(section, record)

    try:
        for i, graph in enumerate(graphs):
            name = graph.name or f"held-out-{i}"
            try:
                record = evaluate_architecture(ghn, graph, data, **kwargs)
            except UnsupportedArchitectureError as e:
                record = {"name": name, "error": str(e)}
            record["name"], record["seed"] = name, i
            record["batch_norm"] = any(n.op == "batch_norm" for n in graph.nodes)
            done("held_out", record)
        for name, make in factories.items():
            try:
                graph = from_module(make().eval(), spec.input_shape, name=name,
                                    num_classes=spec.num_classes)
                record = evaluate_architecture(ghn, graph, data, **kwargs)
            except (UnsupportedArchitectureError, UnsupportedModuleError,
                    GraphValidationError) as e:
                record = {"name": name, "error": str(e)}
            record["name"] = name
            done("zoo", record)
    finally:
        if bar is not None:
            bar.close()

    ok = [r for r in result["held_out"] if "error" not in r]
    result["summary"] = {
        "held_out": summarize(ok),
        # GHN-2 reports networks without batch norm apart: they are the hard case.
        "held_out_by_batch_norm": {
            "with": summarize([r for r in ok if r.get("batch_norm")]),
            "without": summarize([r for r in ok if r.get("batch_norm") is False])},
        "held_out_errors": len(result["held_out"]) - len(ok),
        "held_out_seconds": summarize(ok, ("predict_seconds", "sgd_seconds")),
        "zoo": {r["name"]: {k: r.get(k) for k in (*SCORES, "parameters", "flops", "error")
                            if r.get(k) is not None} for r in result["zoo"]},
    }
    return result
