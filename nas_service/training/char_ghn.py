"""Training a graph hypernetwork for a character task (``gcide-chars``) on language models.

The image harness (:mod:`.ghn_training`) with the character task's data and loss: each step
samples ``meta_batch`` language models from the spaces (``charlm``) with seeds of
:func:`~.ghn_training.step_seeds` (never below ``TRAIN_SEED_OFFSET``), the GHN predicts all
their parameters, every network reads the same ``batch_size`` windows of ``T + 1`` characters
at random positions of the training split, and the sum of their next-character
cross-entropies is back-propagated into the GHN. Every ``validate_every`` steps the held-out
architectures (seeds ``0 ..  validation_architectures - 1``) are scored the way the service
scores them (:func:`~nas_service.scoring.language.predicted_bpc`: validation bits per
character); the GHN with the lowest mean is kept.

Written to ``OUT``: ``ghn.safetensors`` (the best GHN, task ``gcide-chars`` in its metadata)
and ``log.jsonl``. A run is short (minutes on a CPU) and starts afresh: it does not resume.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call

from nas_service.data import get_task
from nas_service.data.characters import load_char_task
from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.ghn.checkpoint import load_ghn, resolve_device, save_ghn
from nas_service.graph import ArchitectureGraph, meta_network
from nas_service.scoring.language import (
    next_token_loss,
    predicted_bpc,
    training_windows,
    validation_windows,
)

from .config import TrainingConfig
from .ghn_training import _lr_at, sample_architectures, step_seeds

VALIDATION_WINDOWS = 64
"""Validation windows of the held-out architectures' scores during training (the service
scores on the task's ``val_size``)."""


def language_model_architectures(cfg: TrainingConfig, seeds: list[int]
                                 ) -> list[ArchitectureGraph]:
    spec = get_task(cfg.task)
    return sample_architectures(cfg.spaces, seeds, spec.input_shape, spec.num_classes,
                                cfg.max_parameters, cfg.max_flops)


def train_char_ghn(cfg: TrainingConfig, out_dir: str | os.PathLike, *,
                   device: str | torch.device | None = None, progress: bool = True,
                   on_log: Callable[[dict], None] | None = None) -> GraphHyperNetwork:
    """Trains a GHN for the character task ``cfg.task``; returns the best one (also written to
    ``out_dir``). See the module docstring."""
    spec = get_task(cfg.task)
    if not spec.is_language_model:
        raise ValueError(f"{spec.name!r} is not a character task")
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    corpus = load_char_task(spec, cfg.data_root)
    steps_per_window = spec.input_shape[0]
    train_tokens = corpus.train.to(dev)
    val_x, val_y = (t.to(dev) for t in validation_windows(corpus.val, steps_per_window,
                                                          VALIDATION_WINDOWS))
    held_out = language_model_architectures(cfg, list(range(cfg.validation_architectures)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "log.jsonl").open("w")

    ghn = GraphHyperNetwork(GHNConfig(**cfg.ghn)).to(dev)
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_step = math.inf, -1
    record = {"task": spec.name, "config": {k: v for k, v in vars(cfg).items()},
              "validation": f"mean predicted-bpc of seeds 0..{cfg.validation_architectures - 1}"
                            f" on {VALIDATION_WINDOWS} validation windows"}

    def log(entry: dict) -> None:
        entry["time"] = time.time()
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        if on_log:
            on_log(entry)

    def validate(step: int) -> float:
        nonlocal best, best_step
        ghn.eval()
        scores = predicted_bpc(ghn, held_out, val_x, val_y)
        ghn.train()
        mean = sum(scores) / len(scores)
        log({"step": step, "val_bpc": mean})
        if mean < best:
            best, best_step = mean, step
            save_ghn(ghn, out / "ghn.safetensors", task=spec.name,
                     training={**record, "step": step, "val_bpc": mean})
        return mean

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc="train-ghn", unit="step")
    generator = torch.Generator().manual_seed(cfg.seed)
    running = 0.0
    ghn.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        seeds = step_seeds(cfg, step)
        graphs = language_model_architectures(cfg, seeds)
        x, y = (t.to(dev) for t in training_windows(train_tokens.cpu(), steps_per_window,
                                                     cfg.batch_size, generator))
        batch, requests = ghn.prepare(graphs)
        params = ghn(batch, requests)
        loss = torch.zeros((), device=dev)
        for seed, graph, p in zip(seeds, graphs, params, strict=True):
            torch.manual_seed(seed)  # the network's dropout draws from its architecture's seed
            loss = loss + next_token_loss(functional_call(meta_network(graph).train(), p, (x,)),
                                          y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ghn.parameters(), cfg.grad_clip)
        opt.step()
        running += float(loss.detach()) / len(graphs)
        if (step + 1) % cfg.log_every == 0:
            log({"step": step + 1, "train_bpc": running / cfg.log_every / math.log(2),
                 "lr": _lr_at(step, cfg)})
            if bar is not None:
                bar.set_postfix(train_bpc=f"{running / cfg.log_every / math.log(2):.3f}")
            running = 0.0
        if (step + 1) % cfg.validate_every == 0 or step + 1 == cfg.steps:
            validate(step + 1)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log_file.close()
    return load_ghn(out / "ghn.safetensors", dev)
