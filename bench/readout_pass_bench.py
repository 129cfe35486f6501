"""Where the readout reads its features: off the recalibration's own forward passes
(``recalibrate(..., one_pass=True)``, what the service's one-batch rungs do) against a second,
eval-mode pass over the recalibration images once the statistics are set (``one_pass=False``,
what its full scores do), on the service's four recalibration batches.

    python bench/readout_pass_bench.py     # writes bench/results/readout_pass_bench.json

Bundled GHN, Fashion-MNIST, the service's recalibration (4 batches of 128 labelled training
images) and 1,000 validation images, one CPU thread, PyTorch's default layout. Every network is
predicted once; each way then recalibrates and refits a copy of the same predicted network.
Sets with ground truth (trained accuracy): the 39 ranked ``cells``/``macro`` architectures
(``bench/results/ranking-fashion-mnist/result.json``) and the generalisation benchmark's
in-distribution, held-out-family and hand-written sets (``bench/results/generalization_bench.json``).
Reported per set: mean accuracy and Kendall tau against trained accuracy each way, the mean and
largest absolute difference of the two scores, and the seconds each way's recalibration and
readout took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.ranked import ranked_architectures, trained_accuracy  # noqa: E402

from nas_service.data import load_task  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.graph import to_module  # noqa: E402
from nas_service.scoring.evaluation import (  # noqa: E402
    accuracy,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.training.evaluate import evaluation_tensors  # noqa: E402
from nas_service.training.generalization import architecture_sets  # noqa: E402

OUT = ROOT / "bench" / "results" / "readout_pass_bench.json"
WAYS = {"one_pass": True, "two_pass": False}


def score_both_ways(graph, ghn, batches, x_val, y_val) -> dict[str, float]:
    """Each way's validation accuracy and recalibration seconds for one architecture."""
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    images, labels = zip(*batches, strict=True)
    row: dict[str, float] = {}
    for way, one_pass in WAYS.items():
        net = load_parameters(to_module(graph, initialize=False), params)
        started = time.perf_counter()
        recalibrate(net, images, labels, one_pass=one_pass)
        row[f"{way}_seconds"] = time.perf_counter() - started
        row[way] = accuracy(net, x_val, y_val, batch_size=100)
    return row


def summarize(rows: list[dict]) -> dict:
    truth = [r["truth"] for r in rows]
    out: dict = {"architectures": len(rows)}
    for way in WAYS:
        scores = [r[way] for r in rows]
        out[way] = {"mean": statistics.fmean(scores), "kendall_tau": kendall_tau(scores, truth),
                    "seconds": sum(r[f"{way}_seconds"] for r in rows)}
    differences = [abs(r["one_pass"] - r["two_pass"]) for r in rows]
    out["mean_abs_difference"] = statistics.fmean(differences)
    out["max_abs_difference"] = max(differences)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("fashion-mnist")
    ghn = load_ghn(None, "cpu")
    shape, classes = task.spec.input_shape, task.spec.num_classes
    x_val, y_val = evaluation_tensors(task, "val", 1000, "cpu")
    batches = recalibration_batches(task, "cpu")
    truth = trained_accuracy()
    generalization = architecture_sets(shape, classes)
    sets = {"ranked": ranked_architectures(ghn, shape, classes, truth),
            **{name: generalization[name]
               for name in ("in_distribution", "held_out_families", "handwritten")}}
    started = time.time()
    result: dict = {"benchmark": "readout_pass", "task": task.spec.name, "ghn": "bundled",
                    "threads": args.threads, "torch": torch.__version__, "sets": {},
                    "architectures": []}
    for name, graphs in sets.items():
        rows = []
        for graph in graphs:
            if graph.content_hash() not in truth:
                continue
            row = score_both_ways(graph, ghn, batches, x_val, y_val)
            row.update(set=name, name=graph.name, truth=truth[graph.content_hash()])
            rows.append(row)
            print(json.dumps(row), flush=True)
        result["sets"][name] = summarize(rows)
        result["architectures"] += rows
    result["seconds"] = time.time() - started
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["sets"].items():
        ways = "  ".join(f"{way} mean {s[way]['mean']:.4f} tau {s[way]['kendall_tau']:.3f} "
                         f"{s[way]['seconds']:.1f} s" for way in WAYS)
        print(f"{name:18s} {s['architectures']:3d}  {ways}  |diff| mean "
              f"{s['mean_abs_difference']:.4f} max {s['max_abs_difference']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
