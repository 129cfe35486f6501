"""The service's score in the channels-last layout, batch norm folded into convolutions for the
evaluation, against PyTorch's default layout and against channels-last without the folding, on
a CPU: time per step, accuracy, and whether each score reproduces exactly from its checkpoint.

    python bench/layout_bench.py          # writes bench/results/layout_bench.json

Bundled GHN, Fashion-MNIST, the service's protocol (1,000 validation images, 4 recalibration
batches of 128, logistic readout), one torch thread. Two sets:

* ``misses``: the first small networks ``bench/latency_bench.py`` sends as cache misses
  (``bench/support/misses.py``: ``cells`` seeds from 2,000,000 up with at most 20 M MACs), on
  which the time per step is reported;
* ``ranked``: the 39 held-out ``cells``/``macro`` architectures with 5-epoch ground truth
  (``bench/results/ranking-fashion-mnist/result.json``), on which each layout's mean score and
  Kendall tau against trained accuracy are reported too.

Each network's parameters are predicted once; each way then recalibrates a fresh copy, refits
its classifier as the service does and evaluates it (channels-last through
``nas_service.scoring.evaluation.default_layout_accuracy``, which evaluates near-tied images
again in the default layout, unfolded). "Reproduces" loads the resulting ``state_dict`` into a fresh
``to_module`` network and checks that the plain ``accuracy`` in the default layout is the
score, to the image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.misses import small_misses  # noqa: E402
from support.ranked import ranked_architectures, ranked_truth  # noqa: E402

from nas_service.data import load_task  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.graph import ArchitectureGraph, to_module  # noqa: E402
from nas_service.scoring.evaluation import (  # noqa: E402
    accuracy,
    default_layout_accuracy,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.scoring.scorer import CPU_EVAL_BATCH_SIZE  # noqa: E402
from nas_service.training.evaluate import evaluation_tensors  # noqa: E402

OUT = ROOT / "bench" / "results" / "layout_bench.json"
WAYS = ("default", "channels-last", "channels-last-unfolded")
"""PyTorch's default layout; the service's way (channels-last, batch norm folded for the
evaluation); channels-last with every batch norm run as it is."""


def score_in(way: str, graph: ArchitectureGraph, params: dict[str, torch.Tensor],
             batches: list[tuple[torch.Tensor, torch.Tensor]], x_val: torch.Tensor,
             y_val: torch.Tensor) -> dict[str, Any]:
    """One way's score (:data:`WAYS`) of ``graph`` with the predicted ``params``: seconds per
    step, the accuracy, images evaluated again, and whether the checkpoint reproduces it."""
    channels_last = way != "default"
    images = [x for x, _ in batches]
    labels = [y for _, y in batches]
    if channels_last:
        images = [x.contiguous(memory_format=torch.channels_last) for x in images]
        x_val = x_val.contiguous(memory_format=torch.channels_last)
    net = load_parameters(to_module(graph, initialize=False), params)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        started = time.perf_counter()
        recalibrate(net, images, labels, one_pass=len(images) == 1)  # as the service does
        read_out = time.perf_counter()
        if channels_last:
            value, again = default_layout_accuracy(
                net, x_val, y_val, batch_size=CPU_EVAL_BATCH_SIZE,
                fold_batch_norm=way == "channels-last")
        else:
            value, again = accuracy(net, x_val, y_val, batch_size=CPU_EVAL_BATCH_SIZE), 0
        evaluated = time.perf_counter()
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        plain = to_module(graph, initialize=False)
        plain.load_state_dict(state)
        reproduced = accuracy(plain, x_val.contiguous(), y_val) == value
    return {"accuracy": value, "evaluated_again": again, "reproduces": reproduced,
            "seconds": {"recalibration_and_readout": read_out - started,
                        "evaluation": evaluated - read_out, "total": evaluated - started}}


def summarise_set(rows: list[dict[str, Any]], truth: dict[str, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"architectures": len(rows)}
    for layout in WAYS:
        scores = [r[layout]["accuracy"] for r in rows]
        totals = [r[layout]["seconds"]["total"] for r in rows]
        out[layout] = {
            "mean_accuracy": statistics.fmean(scores),
            "seconds_median": statistics.median(totals), "seconds_max": max(totals),
            "seconds_sum": sum(totals),
            "reproduce": sum(r[layout]["reproduces"] for r in rows),
            "evaluated_again": sum(r[layout]["evaluated_again"] for r in rows),
        }
        if truth is not None:
            out[layout]["kendall_tau"] = kendall_tau(scores, [truth[r["hash"]] for r in rows])
    speedups = [r["default"]["seconds"]["total"] / r["channels-last"]["seconds"]["total"]
                for r in rows]
    out["speedup_median"] = statistics.median(speedups)
    out["speedup_range"] = [min(speedups), max(speedups)]
    folding = [r["channels-last-unfolded"]["seconds"]["evaluation"]
               / r["channels-last"]["seconds"]["evaluation"] for r in rows]
    out["folding_evaluation_speedup_median"] = statistics.median(folding)
    out["folding_evaluation_seconds"] = {
        way: sum(r[way]["seconds"]["evaluation"] for r in rows)
        for way in ("channels-last", "channels-last-unfolded")}
    out["changed_scores"] = sum(len({r[way]["accuracy"] for way in WAYS}) > 1 for r in rows)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--misses", type=int, default=12, help="small networks to time")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("fashion-mnist")
    ghn = load_ghn(None, "cpu").eval()
    shape, classes = task.spec.input_shape, task.spec.num_classes
    x_val, y_val = evaluation_tensors(task, "val", 1000, "cpu")
    batches = recalibration_batches(task, "cpu")
    truth = ranked_truth()
    sets = {
        "misses": [graph for _, graph in islice(small_misses(), args.misses)],
        "ranked": ranked_architectures(ghn, shape, classes, truth),
    }
    result: dict[str, Any] = {
        "benchmark": "layout", "task": task.spec.name, "ghn": "bundled", "threads": args.threads,
        "torch": torch.__version__, "load_average_before": list(os.getloadavg()),
        "protocol": "1,000 validation images, 4 x 128 recalibration images, logistic readout",
        "sets": {}}
    for name, graphs in sets.items():
        rows = []
        for i, graph in enumerate(graphs):
            with torch.no_grad():
                params = ghn.predict([graph])[0]
            row = {"hash": graph.content_hash(), "name": graph.name, "flops": graph.flops}
            for way in WAYS:
                row[way] = score_in(way, graph, params, batches, x_val, y_val)
            rows.append(row)
            print(f"{name} {i + 1}/{len(graphs)} {graph.name}: " + ", ".join(
                f"{way} {row[way]['seconds']['total']:.2f} s {row[way]['accuracy']:.4f}"
                for way in WAYS), flush=True)
        result["sets"][name] = {"summary": summarise_set(rows, truth if name == "ranked" else None),
                                "architectures": rows}
        print(name, json.dumps(result["sets"][name]["summary"], indent=1), flush=True)
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
