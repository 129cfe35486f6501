"""How many validation images (and recalibration batches) does the surrogate score need?

Scoring time is almost all forward passes of the candidate network (``bench/search_bench.py``),
so it scales with the number of validation images the service scores on (``NAS_EVAL_IMAGES``)
and, less, with the batch-norm recalibration batches. This benchmark measures what fewer images
cost in ranking quality: on the held-out architectures whose trained accuracy is cached by
``nas-service rank-ghn`` (``bench/results/ranking-fashion-mnist/result.json``: 5 epochs of SGD,
test split), the service's score, computed exactly as :class:`ArchitectureScorer` does
(predicted weights, batch norm recalibrated on the first k training batches of 128, seed 0,
eval mode, batches of 100), is taken on the first N validation images for each N; Kendall tau
and Spearman rho against trained accuracy, the mean absolute change of the score from the
5,000-image one, and the seconds per candidate (prediction, recalibration, N images).

One pass over all 5,000 images per architecture and recalibration setting gives every N as a
prefix of the same batches, so the N-image score is exactly what the service reports with
``NAS_EVAL_IMAGES=N``.

    python bench/surrogate_budget_bench.py   # writes bench/results/surrogate_budget_bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from support.processes import ROOT, machine_info, relative

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas_service.graph import to_module  # noqa: E402
from nas_service.runtime import retain_freed_memory  # noqa: E402
from nas_service.scoring.evaluation import load_parameters, recalibrate  # noqa: E402
from nas_service.scoring.metrics import kendall_tau, spearman_rho  # noqa: E402
from nas_service.scoring.scorer import ArchitectureScorer  # noqa: E402
from nas_service.training.evaluate import training_config_of  # noqa: E402
from nas_service.training.ghn_training import held_out_architectures  # noqa: E402

RANKING = ROOT / "bench" / "results" / "ranking-fashion-mnist" / "result.json"
OUT = ROOT / "bench" / "results" / "surrogate_budget_bench.json"
IMAGES = (200, 500, 1000, 2000, 3000, 5000)  # multiples of BATCH
BATCH = 100  # the scorer's CPU evaluation batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recalibration-batches", type=int, nargs="+", default=[4, 2, 1],
                        help="recalibration settings to compare (batches of 128; default 4 2 1)")
    parser.add_argument("--ranking", type=Path, default=RANKING)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    retain_freed_memory()

    ranking = json.loads(args.ranking.read_text())
    rows = ranking["architectures"]
    truth = [r["trained_accuracy"] for r in rows]
    started = machine_info()
    results = {}
    for k in args.recalibration_batches:
        scorer = ArchitectureScorer.load(eval_images=max(IMAGES), recalibration_batches=k)
        data = scorer.task_tensors("fashion-mnist")
        graphs = held_out_architectures(training_config_of(scorer.ghn), 1 + max(
            r["seed"] for r in rows), data.spec.input_shape, data.spec.num_classes)
        scores = {n: [] for n in IMAGES}
        seconds = {n: [] for n in IMAGES}
        for r in rows:
            graph = graphs[r["seed"]]
            assert graph.content_hash() == r["hash"], "held-out set differs from the ranking's"
            with torch.no_grad():
                t0 = time.perf_counter()
                params = scorer.ghn.predict([graph])[0]
                net = load_parameters(to_module(graph, initialize=False), params)
                recalibrate(net, data.recalibration)
                fixed = time.perf_counter() - t0
                correct, t1 = 0, time.perf_counter()
                for start in range(0, max(IMAGES), BATCH):
                    x = data.val_images[start:start + BATCH]
                    y = data.val_labels[start:start + BATCH]
                    correct += int((net(x).argmax(dim=1) == y).sum())
                    done = start + len(y)
                    if done in scores:
                        scores[done].append(correct / done)
                        seconds[done].append(fixed + time.perf_counter() - t1)
            print(f"recal {k}: {r['name']}: " + " ".join(
                f"{n}={scores[n][-1]:.3f}" for n in IMAGES), flush=True)
        full = scores[max(IMAGES)]
        results[f"recalibration_{k}x128"] = {
            str(n): {"kendall_tau": round(kendall_tau(scores[n], truth), 4),
                     "spearman_rho": round(spearman_rho(scores[n], truth), 4),
                     "mean_abs_change_from_5000": round(statistics.mean(
                         abs(a - b) for a, b in zip(scores[n], full, strict=True)), 4),
                     "seconds_per_candidate": round(statistics.mean(seconds[n]), 3)}
            for n in IMAGES}
        results[f"recalibration_{k}x128"]["scores"] = {str(n): scores[n] for n in IMAGES}
    record = {"benchmark": "surrogate_budget", **started,
              "load_average_after": machine_info()["load_average"],
              "architectures": len(rows), "ground_truth": relative(args.ranking.resolve()),
              "truth": "test accuracy after 5 epochs of SGD", "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for setting, by_n in results.items():
        print(setting, {n: (v["kendall_tau"], v["seconds_per_candidate"])
                        for n, v in by_n.items() if n != "scores"})
    print(f"wrote {relative(args.out.resolve())}")


if __name__ == "__main__":
    main()
