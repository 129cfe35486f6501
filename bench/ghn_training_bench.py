"""GHN training speed: the time of each part of a step, and steps per second.

The default run (``cells,macro``, meta-batch 8, batch 32, the default GHN, Fashion-MNIST) times
``--steps`` steps part by part, then the same number again through the training loop's own
update, for each thread count:

* preparing a step (what ``train-ghn --workers N`` moves into worker processes): sampling the
  architectures, featurising them, collating them into one batch, building their networks;
* the step itself: copying the batch and image indices to the device, the GHN's forward pass,
  the target networks' forward passes (and the loss), the backward pass, the optimizer
  (clipping and AdamW);
* ``update_s``: the training loop's own ``_update`` over already prepared steps, synchronised
  once at the end, as ``train-ghn`` runs it when the workers keep up: on a GPU, host and device
  then overlap and this is less than the sum of the parts. On a GPU, ``host_syncs_in_update``
  lists what made the host wait for the device in three more updates (CUDA's sync debug mode;
  empty: nothing did).

Each part is the median over the timed steps (other processes on the machine make single steps
slow). Steps per second: ``inline`` (one process does everything, ``--workers 0``: the sum of
the parts) and ``prepared_ahead`` (``1 / update_s``). With ``--device cuda`` each part is timed between two
synchronisations. Writes ``bench/results/ghn_training_bench.json`` (``--out`` elsewhere).

    python bench/ghn_training_bench.py                      # CPU, 1 and 2 threads, 8 steps each
    python bench/ghn_training_bench.py --device cuda --threads 4 --steps 30 --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREPARE = ("sample", "featurise", "collate", "networks")
STEP = ("to_device", "ghn_forward", "target_forward", "backward", "optimizer")


def run(threads: int, steps: int, device: str, first_step: int, data_root: str | None
        ) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from nas_service.data import load_task
    from nas_service.ghn import GHNConfig, GraphHyperNetwork
    from nas_service.ghn.features import featurize, parameter_requests
    from nas_service.ghn.model import collate
    from nas_service.training.config import TrainingConfig
    from nas_service.training.ghn_training import (
        StepInputs,
        _to_device,
        _update,
        build_step,
        sample_architectures,
        step_images,
        step_network,
        step_seeds,
    )

    torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = TrainingConfig()
    task = load_task(cfg.task, data_root)
    x_train, y_train = task.tensors("train", device=dev)
    torch.manual_seed(cfg.seed)
    ghn = GraphHyperNetwork(GHNConfig(**cfg.ghn)).to(dev).train()
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shape, classes = task.spec.input_shape, task.spec.num_classes

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times: dict[str, list[float]] = {part: [] for part in PREPARE + STEP}
    nodes, tensors = [], []

    def timed(part: str, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times[part].append(time.perf_counter() - t)
        return out

    # The parts, step by step: the same calls as build_step and _update, one timer each.
    for step in range(first_step - 1, first_step + steps):  # the first one warms up, untimed
        seeds = step_seeds(cfg, step)
        graphs = timed("sample", lambda s=seeds: sample_architectures(
            cfg.spaces, s, shape, classes, cfg.max_parameters, cfg.max_flops))
        features = timed("featurise", lambda g=graphs: [
            (featurize(x, ghn.config.virtual_cutoff), parameter_requests(x)) for x in g])
        batch, requests = timed("collate", lambda g=graphs, f=features: collate(g, f, ghn.config))
        nets = timed("networks", lambda g=graphs: [step_network(x) for x in g])
        item = StepInputs(step, seeds, graphs, batch, requests, nets,
                          step_images(cfg, step, len(x_train)))
        batch, idx = timed("to_device", lambda i=item: _to_device(i, dev))
        x, y = x_train[idx], y_train[idx]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            params = timed("ghn_forward", lambda b=batch, r=requests: [
                {k: v.float() for k, v in p.items()} for p in ghn(b, r)])

            def targets(params=params, nets=nets, seeds=seeds, x=x, y=y):
                loss = torch.zeros((), device=dev)
                for s, net, p in zip(seeds, nets, params, strict=True):
                    torch.manual_seed(s)
                    loss = loss + F.cross_entropy(functional_call(net.train(), p, (x,)).float(), y)
                return loss

            loss = timed("target_forward", targets)

        def backward(loss=loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()

        timed("backward", backward)

        def optimizer():
            torch.nn.utils.clip_grad_norm_(ghn.parameters(), cfg.grad_clip)
            opt.step()

        timed("optimizer", optimizer)
        if step < first_step:
            for part in times:
                times[part].clear()
        else:
            nodes.append(sum(len(g.nodes) for g in graphs))
            tensors.append(sum(len(r) for r in requests))

    # The training loop's own update over steps prepared beforehand, one sync at the end.
    later = range(first_step + steps, first_step + 2 * steps)
    prepared = [build_step(cfg, s, ghn=ghn.config, input_shape=shape, num_classes=classes,
                           train_size=len(x_train)) for s in later]
    sync()
    t = time.perf_counter()
    for item in prepared:
        batch, idx = _to_device(item, dev)
        _update(ghn, opt, batch, item.requests, item.networks, x_train[idx], y_train[idx],
                cfg.grad_clip, seeds=item.seeds)
    sync()
    update_s = (time.perf_counter() - t) / steps
    syncs = None
    if dev.type == "cuda":  # what in a step makes the host wait for the GPU, if anything
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            for item in prepared[:3]:
                batch, idx = _to_device(item, dev)
                _update(ghn, opt, batch, item.requests, item.networks, x_train[idx],
                        y_train[idx], cfg.grad_clip, seeds=item.seeds)
            torch.cuda.set_sync_debug_mode("default")
        syncs = sorted({str(w.message).splitlines()[0] for w in caught})

    median = {part: statistics.median(v) for part, v in times.items()}
    prepare_s = sum(median[p] for p in PREPARE)
    step_s = sum(median[p] for p in STEP)
    return {
        "threads": threads, "device": str(dev), "steps_timed": steps,
        "mean_nodes_per_step": sum(nodes) / len(nodes),
        "mean_parameter_tensors_per_step": sum(tensors) / len(tensors),
        "seconds": {part: round(v, 5) for part, v in median.items()},
        "prepare_s": round(prepare_s, 4), "step_s": round(step_s, 4),
        "update_s": round(update_s, 4),
        "host_syncs_in_update": syncs,
        "steps_per_second": {"inline": round(1 / (prepare_s + step_s), 3),
                             "prepared_ahead": round(1 / update_s, 3)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8,
                        help="steps timed part by part, and again through the update, per "
                             "thread count (default: %(default)s)")
    parser.add_argument("--first-step", type=int, default=1,
                        help="the first timed step: which architectures and images "
                             "(default: %(default)s; the one before it warms up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST's folder")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                             "ghn_training_bench.json"))
    args = parser.parse_args(argv)
    import torch

    from nas_service.training.config import TrainingConfig

    cfg = TrainingConfig()
    load = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        result = run(threads, args.steps, args.device, args.first_step, args.data_root)
        print(json.dumps(result), flush=True)
        results.append(result)
        record = {  # rewritten after each thread count: a stopped run keeps what it measured
            "benchmark": "ghn_training", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "load_average_before": [round(v, 2) for v in load],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "config": {"task": cfg.task, "spaces": list(cfg.spaces),
                       "meta_batch": cfg.meta_batch, "batch_size": cfg.batch_size,
                       "ghn": "GHNConfig() (the default)"},
            "statistic": "parts: median over the timed steps; update_s: mean",
            "results": results,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
