"""Training a graph hypernetwork with meta-batches of sampled architectures (GHN-2, sec. 3).

Each step samples ``meta_batch`` architectures from the search spaces, the GHN predicts all their
parameters, every network runs on the same image batch, and the sum of their cross-entropies is
back-propagated into the GHN. Everything random is a function of ``(seed, step)``, so a run
resumed from its checkpoint continues exactly as if it had never stopped.

Checkpoints (every ``checkpoint_every`` steps, written atomically next to each other):

* ``<out>/ghn.safetensors`` — the GHN (loadable with :func:`~nas_service.ghn.load_ghn`),
* ``<out>/optimizer.safetensors`` — AdamW moments, no pickle,
* ``<out>/state.json`` — step, config and the best validation accuracy,
* ``<out>/log.jsonl`` — one line per logged step and per validation.

What a step needs before the GHN runs (sampling ``meta_batch`` architectures, featurising them,
collating them into one batch, building their networks) is a pure function of ``(config,
step)``, :func:`build_step`: with ``workers > 0`` it runs ahead in that many worker processes,
so a GPU is not left waiting on Python (on 2 CPU cores there is nothing to gain and
``workers=0`` does it inline). The step itself copies the collated batch and the image indices
to the device once and reads nothing back: the loss reaches the host once per logged step.

Several processes started by ``torchrun`` train one GHN (:mod:`.distributed`): each prepares and
runs its share of every step's architectures, the gradients are summed across them, and rank 0
alone writes the run's folder and validates. The update equals one process's up to the order of
floating-point sums, and a run resumes identically with any number of processes: a network's
dropout draws from its architecture's seed, not from the process's random stream.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from torch_geometric.data import Batch, Data

from nas_service.data import load_task
from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.ghn.checkpoint import load_ghn, read_metadata, resolve_device, save_ghn
from nas_service.ghn.features import ParameterRequest, featurize, parameter_requests
from nas_service.ghn.model import collate
from nas_service.graph import ArchitectureGraph, GraphNetwork, meta_network, to_module
from nas_service.scoring.evaluation import accuracy, load_parameters
from nas_service.spaces import get_space

from .config import TRAIN_SEED_OFFSET, TrainingConfig
from .distributed import GradientSum, Ranks, current_ranks, from_main


def _lr_at(step: int, cfg: TrainingConfig, rewarm_from: int | None = None) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak. ``rewarm_from``: the step a run
    resumed without its optimizer moments (fresh AdamW) started from; the learning rate ramps up
    again over ``warmup_steps`` from there, as Adam's first updates are the least reliable."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    lr = cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    if rewarm_from is not None:
        lr *= min(1.0, (step - rewarm_from + 1) / max(1, cfg.warmup_steps))
    return lr


def sample_architectures(spaces: tuple[str, ...], seeds: list[int], input_shape: tuple[int, ...],
                         num_classes: int, max_parameters: int, max_flops: int
                         ) -> list[ArchitectureGraph]:
    """Architecture ``i`` comes from ``spaces[seed % len(spaces)]`` with that seed."""
    return [get_space(spaces[s % len(spaces)]).sample(
        s, input_shape=input_shape, num_classes=num_classes, max_parameters=max_parameters,
        max_flops=max_flops) for s in seeds]


def held_out_architectures(cfg: TrainingConfig, count: int, input_shape: tuple[int, ...],
                           num_classes: int) -> list[ArchitectureGraph]:
    """The fixed evaluation set: seeds ``0..count-1``, never used in training."""
    return sample_architectures(cfg.spaces, list(range(count)), input_shape, num_classes,
                                cfg.max_parameters, cfg.max_flops)


def step_seeds(cfg: TrainingConfig, step: int) -> list[int]:
    """The seeds of step ``step``'s ``meta_batch`` architectures (a function of ``(cfg.seed,
    step)``); each also seeds its network's dropout."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    return [TRAIN_SEED_OFFSET + rng.randrange(1 << 30) for _ in range(cfg.meta_batch)]


def step_images(cfg: TrainingConfig, step: int, train_size: int) -> torch.Tensor:
    """Indices into the training split of step ``step``'s image batch."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randint(0, train_size, (cfg.batch_size,), generator=gen)


def step_network(graph: ArchitectureGraph) -> GraphNetwork:
    """``graph``'s network as a training step runs it: on the ``meta`` device, so it holds no
    memory (the step's predicted parameters are all it computes with), and with batch norm
    that keeps no running statistics (a step's networks are dropped after it; normalising with
    the batch's statistics is the same either way). Cheap to pickle from a worker."""
    net = meta_network(graph)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


@dataclass
class StepInputs:
    """What one process needs for step ``step`` before the GHN runs; see :func:`build_step`."""

    step: int
    seeds: list[int]
    """Of this process's share of the step's architectures; each seeds its network's dropout."""
    graphs: list[ArchitectureGraph]
    batch: Batch
    """The graphs' features collated on the host (:func:`~nas_service.ghn.model.collate`)."""
    requests: list[list[ParameterRequest]]
    networks: list[GraphNetwork]
    """:func:`step_network`: no tensors, run with the predicted parameters."""
    images: torch.Tensor
    """Indices into the training split: the image batch every network of the step runs on."""


def build_step(cfg: TrainingConfig, step: int, *, ghn: GHNConfig, input_shape: tuple[int, ...],
               num_classes: int, train_size: int, ranks: Ranks | None = None) -> StepInputs:
    """Step ``step``'s architectures (featurised and collated for a GHN configured as ``ghn``,
    networks built on ``meta``) and image batch: a function of ``(cfg, step)`` alone, so a
    resumed run, or one with another number of workers or processes, trains on exactly the same
    sequence. With several processes, ``ranks``' share of the architectures."""
    seeds = (ranks or Ranks()).share(step_seeds(cfg, step))
    graphs = sample_architectures(cfg.spaces, seeds, input_shape, num_classes,
                                  cfg.max_parameters, cfg.max_flops)
    batch, requests = collate(
        graphs, [(featurize(g, ghn.virtual_cutoff), parameter_requests(g)) for g in graphs], ghn)
    return StepInputs(step, seeds, graphs, batch, requests, [step_network(g) for g in graphs],
                      step_images(cfg, step, train_size))


def _worker_init() -> None:
    torch.set_num_threads(1)  # each worker is one core's worth of Python


def step_inputs(make: Callable[[int], StepInputs], steps: range, workers: int
                ) -> Iterator[StepInputs]:
    """``make(step)`` for each step, in order: inline, or computed ahead by ``workers``
    processes (at most ``2 * workers`` steps in flight, so memory stays bounded)."""
    if workers <= 0:
        for step in steps:
            yield make(step)
        return
    # spawn, not fork: the parent may already hold a CUDA context, which a fork must not copy.
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    try:
        pending: deque = deque()
        todo = iter(steps)
        for step in todo:
            pending.append(pool.apply_async(make, (step,)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(make, (nxt,)))
            yield result
    finally:
        pool.terminate()
        pool.join()


def start_from_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                          cfg: TrainingConfig) -> int:
    """Makes ``out_dir`` continue the run that produced a GHN checkpoint (the bundled one, say)
    with ``cfg`` (the same settings, more steps): copies its weights and writes the
    ``state.json`` its training record describes. The optimizer moments are not in a GHN
    checkpoint: the resumed run starts a fresh AdamW and warms its learning rate up again.
    Returns the step the run continues from."""
    out = Path(out_dir)
    if (out / "state.json").exists():
        raise ValueError(f"{out} already holds a run (state.json); resume it instead")
    meta = read_metadata(checkpoint)
    record = meta["training"]
    if "step" not in record or "config" not in record:
        raise ValueError(f"{checkpoint} has no training record (step, config) to continue from")
    _check_same_run(record["config"], cfg)
    if record["step"] >= cfg.steps:
        raise ValueError(f"{checkpoint} was trained for {record['step']} steps already; "
                         f"ask for more than that with --steps")
    ghn = load_ghn(checkpoint, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    save_ghn(ghn, out / "ghn.safetensors", task=meta["task"], training=record)
    state = {**record, "initialized_from": str(checkpoint)}
    (out / "state.json").write_text(json.dumps(state, indent=2))
    return int(record["step"])


class _NetworkCache:
    """Target networks by content hash: building one is cheap, but not free."""

    def __init__(self, device: torch.device, maxsize: int = 256):
        self.device, self.maxsize = device, maxsize
        self._nets: dict[str, GraphNetwork] = {}

    def get(self, graph: ArchitectureGraph) -> GraphNetwork:
        key = graph.content_hash()
        net = self._nets.get(key)
        if net is None:
            if len(self._nets) >= self.maxsize:
                self._nets.pop(next(iter(self._nets)))
            net = self._nets[key] = to_module(graph, initialize=False, device=self.device)
        return net


def meta_step(ghn: GraphHyperNetwork, opt: torch.optim.Optimizer,
              graphs: list[ArchitectureGraph], nets: list[GraphNetwork], x: torch.Tensor,
              y: torch.Tensor, grad_clip: float,
              features: list[tuple[Data, list[ParameterRequest]]] | None = None
              ) -> tuple[float, float]:
    """One GHN-2 update: predict every graph's parameters, run all networks on the same batch,
    back-propagate the summed cross-entropy. Returns the mean loss and accuracy per network.
    Mixed precision (bfloat16) on CUDA; batch norm of the networks uses batch statistics."""
    batch, requests = ghn.prepare(graphs, features)
    loss, correct = _update(ghn, opt, batch, requests, nets, x, y, grad_clip).tolist()
    return loss / len(graphs), correct / len(graphs)


def _update(ghn: GraphHyperNetwork, opt: torch.optim.Optimizer, batch: Batch,
            requests: list[list[ParameterRequest]], nets: list[GraphNetwork], x: torch.Tensor,
            y: torch.Tensor, grad_clip: float, *, seeds: list[int] | None = None,
            gradient_sum: GradientSum | None = None) -> torch.Tensor:
    """:func:`meta_step` on a prepared batch, leaving its result on the device: ``(loss,
    correct)``, sums over the networks (over every rank's, with ``gradient_sum``). ``seeds``:
    one per network, seeding its dropout."""
    use_amp = x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        # float32 parameters: autocast still runs convolutions and matrix products in bfloat16,
        # but batch norm needs its weight in the dtype of its float32 running statistics.
        params = [{k: v.float() for k, v in p.items()} for p in ghn(batch, requests)]
        loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device)
        for i, (net, p) in enumerate(zip(nets, params, strict=True)):
            if seeds is not None:
                torch.manual_seed(seeds[i])
            logits = functional_call(net.train(), p, (x,))
            loss = loss + F.cross_entropy(logits.float(), y)
            correct = correct + (logits.argmax(1) == y).float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    totals = torch.stack([loss.detach(), correct])
    if gradient_sum is not None:
        totals = gradient_sum(list(ghn.parameters()), totals)
    torch.nn.utils.clip_grad_norm_(ghn.parameters(), grad_clip)
    opt.step()
    return totals


# Settings that change only bookkeeping, not what is trained (data_root is where the task's
# files are, not which task): a resumed run may change them.
_RESUMABLE_CHANGES = frozenset({"steps", "validate_every", "checkpoint_every", "log_every",
                                "data_root"})


def _check_same_run(saved: dict, cfg: TrainingConfig) -> None:
    """A resumed run must keep its settings (only ``steps`` may grow, and how often it logs,
    validates and checkpoints may change): anything else would silently mix two experiments in
    one checkpoint."""
    now = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as saved
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now
               if k not in _RESUMABLE_CHANGES and k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError("the run being resumed was started with other settings ("
                         + "; ".join(changed) + "); use the same settings or start over")


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    tensors = {}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Restores AdamW's moments. A parameter that grew rows since they were saved (the op
    embedding after :meth:`~nas_service.ghn.GraphHyperNetwork.extend_ops`) gets zero moments for
    its new rows, as a fresh optimizer would."""
    flat = load_file(str(path))
    sd = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        shape = params[int(i)].shape
        if value.dim() and value.shape[1:] == shape[1:] and value.shape[0] < shape[0]:
            value = torch.cat([value, value.new_zeros(shape[0] - value.shape[0], *shape[1:])])
        state.setdefault(int(i), {})[name] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def train_ghn(cfg: TrainingConfig, out_dir: str | os.PathLike, *,
              device: str | torch.device | None = None,
              resume: bool = True, progress: bool = True, workers: int = 0,
              warm_start: str | os.PathLike | None = None,
              on_log: Callable[[dict], None] | None = None) -> GraphHyperNetwork:
    """Trains (or resumes training) a GHN; returns it. See the module docstring.

    ``workers``: processes that prepare steps ahead of the GHN (0: inline). ``warm_start``: a
    new run (step 0, ``cfg``'s own settings, e.g. other search spaces) starts from this GHN
    checkpoint's weights instead of a random initialisation; its architecture (``GHNConfig``)
    is the checkpoint's, so ``cfg.ghn`` must be empty. Ignored when resuming.

    In a process group (``torchrun``, :func:`~.distributed.training_processes`) every rank
    calls it with its own ``device`` and ``workers``; rank 0 alone reads and writes ``out_dir``
    (and ``warm_start``), logs (``on_log``, the progress bar) and validates."""
    ranks = current_ranks()
    if cfg.meta_batch < ranks.world_size:
        raise ValueError(f"a meta-batch of {cfg.meta_batch} leaves some of the "
                         f"{ranks.world_size} processes without an architecture")
    out = Path(out_dir)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    task = load_task(cfg.task, cfg.data_root)
    spec = task.spec
    x_train, y_train = task.tensors("train", device=dev)

    state_path, ghn_path = out / "state.json", out / "ghn.safetensors"
    opt_path = out / "optimizer.safetensors"
    ghn, opt, start_step, best, lineage = None, None, 0, 0.0, {}
    if ranks.main:
        ghn, opt, start_step, best, lineage = _open_run(cfg, out, dev, resume, warm_start)
    if ranks.world_size > 1:
        ghn, opt, start_step, lineage = _share_run(ghn, opt, start_step, lineage, cfg, dev)
    rewarm_from = lineage.get("rewarm_from")
    gradient_sum = GradientSum() if ranks.world_size > 1 else None

    if ranks.main:
        x_val, y_val = task.tensors("val", device=dev)
        nets = _NetworkCache(dev)
        held_out = held_out_architectures(cfg, cfg.validation_architectures, spec.input_shape,
                                          spec.num_classes)
        log_file = (out / "log.jsonl").open("a")

    def log(record: dict) -> None:
        record["time"] = time.time()
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if on_log:
            on_log(record)

    def validate(step: int) -> float:
        ghn.eval()
        with torch.no_grad():
            params = ghn.predict(held_out)
        accs = []
        for g, p in zip(held_out, params, strict=True):
            net = load_parameters(nets.get(g), p)
            accs.append(accuracy(net, x_val[:2000], y_val[:2000], bn_mode="batch",
                                 batch_size=500))
        ghn.train()
        mean = sum(accs) / len(accs)
        log({"step": step, "val_accuracy": mean, "val_min": min(accs), "val_max": max(accs)})
        return mean

    def checkpoint(step: int) -> None:
        record = {"config": asdict(cfg), "step": step, "best_val_accuracy": best, **lineage}
        save_ghn(ghn, ghn_path, task=cfg.task, training=record)
        _save_optimizer(opt, opt_path)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, state_path)

    bar = None
    if progress and ranks.main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start_step, desc="train-ghn", unit="step",
                   dynamic_ncols=True)
    sums: list[torch.Tensor] = []  # (loss, correct) of each step since the last log, on device
    make = partial(build_step, cfg, ghn=ghn.config, input_shape=spec.input_shape,
                   num_classes=spec.num_classes, train_size=len(x_train), ranks=ranks)
    inputs = step_inputs(make, range(start_step, cfg.steps), workers)
    t0 = time.time()
    try:
        for item in inputs:
            step = item.step
            batch, idx = _to_device(item, dev)
            x, y = x_train[idx], y_train[idx]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg, rewarm_from)
            totals = _update(ghn, opt, batch, item.requests, item.networks, x, y, cfg.grad_clip,
                             seeds=item.seeds, gradient_sum=gradient_sum)
            done = step + 1
            if not ranks.main:
                continue
            sums.append(totals)
            if bar is not None:
                bar.update(1)
            if done % cfg.log_every == 0:
                per_step = torch.stack(sums).tolist()  # the one read from the device
                rec = {"step": done,
                       "loss": sum(loss / cfg.meta_batch for loss, _ in per_step) / len(sums),
                       "train_accuracy": sum(c / cfg.meta_batch for _, c in per_step) / len(sums),
                       "lr": _lr_at(step, cfg, rewarm_from),
                       "seconds_per_step": (time.time() - t0) / len(sums)}
                log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_accuracy']:.3f}")
                sums = []
                t0 = time.time()
            if done % cfg.validate_every == 0 or done == cfg.steps:
                best = max(best, validate(done))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
    finally:
        inputs.close()  # stops the worker processes
        if bar is not None:
            bar.close()
        if ranks.main:
            log_file.close()
    return ghn.eval()


def _open_run(cfg: TrainingConfig, out: Path, dev: torch.device, resume: bool,
              warm_start: str | os.PathLike | None
              ) -> tuple[GraphHyperNetwork, torch.optim.Optimizer, int, float, dict]:
    """The GHN and optimizer a run starts from (``out``'s run when resuming, a warm start, or
    a fresh GHN), the step, the best validation accuracy so far and the run's lineage."""
    out.mkdir(parents=True, exist_ok=True)
    state_path, ghn_path = out / "state.json", out / "ghn.safetensors"
    opt_path = out / "optimizer.safetensors"
    start_step, best = 0, 0.0
    lineage: dict = {}
    if resume and state_path.exists() and ghn_path.exists():
        state = json.loads(state_path.read_text())
        _check_same_run(state.get("config", {}), cfg)
        ghn = load_ghn(ghn_path, dev).train()
        start_step, best = state["step"], state.get("best_val_accuracy", 0.0)
        lineage = {k: state[k] for k in ("initialized_from", "rewarm_from", "warm_started_from")
                   if k in state}
    elif warm_start is not None:
        if cfg.ghn:
            raise ValueError("a warm start takes the checkpoint's GHN architecture; "
                             f"drop the overrides {sorted(cfg.ghn)}")
        ghn = load_ghn(warm_start, dev)
        lineage = {"warm_started_from": str(warm_start)}
    else:
        ghn = GraphHyperNetwork(GHNConfig(**cfg.ghn)).to(dev)
    ghn.train()
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if start_step and opt_path.exists():
        _load_optimizer(opt, opt_path)
    elif start_step and "rewarm_from" not in lineage:
        lineage["rewarm_from"] = start_step  # no optimizer state: a fresh AdamW from here
    return ghn, opt, start_step, best, lineage


def _share_run(ghn: GraphHyperNetwork | None, opt: torch.optim.Optimizer | None,
               start_step: int, lineage: dict, cfg: TrainingConfig, dev: torch.device
               ) -> tuple[GraphHyperNetwork, torch.optim.Optimizer, int, dict]:
    """Rank 0's starting point (its GHN and optimizer; ``None`` on the other ranks) on every
    rank: the others never read the run's folder, so it need not be shared between machines."""
    start = None
    if ghn is not None and opt is not None:
        start = {"config": ghn.config.to_json(),
                 "weights": {k: v.cpu() for k, v in ghn.state_dict().items()},
                 "optimizer": _on_cpu(opt.state_dict()), "step": start_step, "lineage": lineage}
    start = from_main(start)
    if ghn is None or opt is None:
        ghn = GraphHyperNetwork(GHNConfig.from_json(start["config"]))
        ghn.load_state_dict(start["weights"])
        ghn = ghn.to(dev).train()
        opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(start["optimizer"])
    return ghn, opt, start["step"], start["lineage"]


def _on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _to_device(item: StepInputs, dev: torch.device) -> tuple[Batch, torch.Tensor]:
    """The step's collated batch and image indices on ``dev``: copied whole, without waiting
    (from pinned memory on CUDA, so the copy overlaps the host's next work)."""
    batch, images = item.batch, item.images
    if dev.type == "cuda":
        batch, images = batch.pin_memory(), images.pin_memory()
    return batch.to(dev, non_blocking=True), images.to(dev, non_blocking=True)
