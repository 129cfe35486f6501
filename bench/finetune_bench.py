"""A few SGD steps from the predicted weights as a ranking signal: does the accuracy after a
short fine-tune rank architectures by their trained accuracy better than the service's score,
and better than the same steps from a random initialisation?

    python bench/finetune_bench.py --threads 2     # writes bench/results/finetune_bench.json
    python bench/finetune_bench.py --threads 2 --steps 2 --lrs \
        --out bench/results/finetune_bench_2steps.json       # the random start alone, 2 steps
    python bench/finetune_bench.py --threads 2 --lrs --sets ranked \
        --out bench/results/finetune_bench_ranked.json       # the GHN's own spaces

Bundled GHN, Fashion-MNIST, the generalisation benchmark's sets with ground truth (trained
accuracy, ``bench/results/generalization_bench.json``): in-distribution families, held-out
families and hand-written CNNs; and the 39 ranked ``cells``/``macro`` architectures of the GHN's
own spaces (5-epoch trained accuracy, ``bench/support/ranked.py``; ``--sets ranked``). For each
architecture:

* ``service`` — the service's predicted-parameter accuracy (predicted weights, batch norm
  recalibrated and the readout refit on the 4 recalibration batches, 1,000 validation images);
* ``finetune_lr<lr>`` — that network after ``--steps`` steps of the ground truth's SGD protocol
  (:func:`~nas_service.training.evaluate.sgd_train`: nesterov momentum, cosine decay, batches of
  128 of the first 8,000 training images) at learning rate ``lr``, its batch norm recalibrated
  again, on the same validation images (the default, 0.005, is a tenth of the protocol's own
  0.05, which undoes the predicted weights: the first network, 76 % before, 54 % after 8 steps);
* ``random`` — the same steps from PyTorch's default initialisation at the protocol's learning
  rate (what the steps alone are worth): the service's short training
  (:func:`~nas_service.scoring.short_training.short_training_accuracy`, what a search job with
  ``ranking: {"method": "short-training"}`` ranks by).

``--asset`` records the short training's Kendall τ per set in
``nas_service/assets/short-training.json`` under the task and ``--steps``, which the API quotes
for jobs ranked by it (the held-out families' τ first: no choice of the protocol was made on
them).

With several ``--lrs``, the one whose τ is highest on the in-distribution set is named as the
choice (``chosen_on_in_distribution``); the out-of-distribution sets report every one, so the
choice can be checked but is not made on them. Reported per set: mean accuracy and Kendall τ against trained accuracy for each way, and
the seconds each took (one CPU thread unless ``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.ranked import (  # noqa: E402
    generalization_records,
    ranked_architectures,
    trained_accuracy,
)

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
from nas_service.scoring.ranking_head import RankingHead, _solve  # noqa: E402
from nas_service.scoring.short_training import (  # noqa: E402
    short_training_accuracy,
    training_batches,
)
from nas_service.training.evaluate import (  # noqa: E402
    SGD_BATCH_SIZE,
    evaluation_tensors,
    sgd_train,
)
from nas_service.training.generalization import (  # noqa: E402
    GROUND_TRUTH,
    SERVICE_GRAD_NORM,
    architecture_sets,
)

OUT = ROOT / "bench" / "results" / "finetune_bench.json"
ASSET = ROOT / "nas_service" / "assets" / "short-training.json"
HEAD = ROOT / "nas_service" / "assets" / "ghn-fashion-mnist.ranking-head.json"
SETS = ("held_out_families", "handwritten", "in_distribution", "ranked")
HEAD_SETS = SETS[:3]  # those with the generalisation benchmark's records (the gradient norm)


def score(graph, ghn, task, batches, training, x_val, y_val, steps: int, lrs: list[float]
          ) -> dict[str, float]:
    images, labels = zip(*batches, strict=True)
    epochs = steps / (GROUND_TRUTH.images // SGD_BATCH_SIZE)
    row: dict[str, float] = {}
    started = time.perf_counter()
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    net = load_parameters(to_module(graph, initialize=False), params)
    recalibrate(net, images, labels)
    row["service"] = accuracy(net, x_val, y_val)
    row["service_seconds"] = time.perf_counter() - started
    for lr in lrs:
        way = f"finetune_lr{lr:g}"
        started = time.perf_counter()
        tuned = sgd_train(net, task, epochs=epochs, lr=lr, max_images=GROUND_TRUTH.images)
        recalibrate(tuned, images)
        row[way] = accuracy(tuned, x_val, y_val)
        row[f"{way}_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    row["random"] = short_training_accuracy(graph, training, task.spec, images, x_val, y_val,
                                            steps=steps)
    row["random_seconds"] = time.perf_counter() - started
    return row


TOP = 3
"""A search keeps its best few: the trained accuracy of the ``TOP`` architectures each way ranks
first is what a search ranked that way would hand a user."""


def _top_truth(rows: list[dict], key: str) -> float:
    """Mean trained accuracy of the :data:`TOP` rows with the highest ``key``."""
    best = sorted(rows, key=lambda r: -r[key])[:TOP]
    return statistics.fmean(r["truth"] for r in best)


REFERENCES = ("served_head", "sgd_1_epoch")
"""Ways measured elsewhere, summarised beside the others where every row of a set has them:
the served ranking head's estimate (its file, on the service's score and gradient norm) and one
epoch of SGD (the generalisation benchmark's)."""


def summarize(rows: list[dict], ways: list[str]) -> dict:
    truth = [r["truth"] for r in rows]
    out = {"architectures": len(rows), f"top{TOP}_truth_best_possible": _top_truth(rows, "truth"),
           "truth_mean": statistics.fmean(truth),
           **{way: {"mean": statistics.fmean(r[way] for r in rows),
                    "kendall_tau": kendall_tau([r[way] for r in rows], truth),
                    f"top{TOP}_truth": _top_truth(rows, way),
                    "seconds_mean": statistics.fmean(r[f"{way}_seconds"] for r in rows)}
              for way in ways}}
    for way in REFERENCES:
        if all(r.get(way) is not None for r in rows):
            out[way] = {"kendall_tau": kendall_tau([r[way] for r in rows], truth),
                        f"top{TOP}_truth": _top_truth(rows, way)}
    return out


HEADS = {"score + gradient norm (the served head's features)": ("service", "log10_grad_norm"),
         "short training alone": ("random",),
         "score + short training": ("service", "random"),
         "score + gradient norm + short training": ("service", "log10_grad_norm", "random")}


def head_analysis(rows: list[dict]) -> dict:
    """Ranking heads (the service's ridge: standardised features, L2 1) fit on the
    in-distribution set's trained accuracy, their Kendall τ on every set (in sample on the
    first). The gradient norm is the service's (``service_grad_norm`` of the generalisation
    benchmark's records); the short training is the ``random`` way."""
    rows = [r for r in rows if r["set"] in HEAD_SETS]
    fit_on = [r for r in rows if r["set"] == "in_distribution"]
    out: dict = {"fit_on": f"{len(fit_on)} in-distribution architectures"}
    for name, features in HEADS.items():
        weights, bias, mean, std = _solve(np.array([[r[f] for f in features] for r in fit_on]),
                                          np.array([r["truth"] for r in fit_on]), 1.0)
        taus = {}
        for set_name in HEAD_SETS:
            members = [r for r in rows if r["set"] == set_name]
            x = np.array([[r[f] for f in features] for r in members])
            estimate = bias + ((x - mean) / std) @ weights
            taus[set_name] = kendall_tau(list(estimate), [r["truth"] for r in members])
        out[name] = taus
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lrs", type=float, nargs="*", default=[0.005],
                        help="fine-tune learning rates (none: the random start alone)")
    parser.add_argument("--sets", default=",".join(HEAD_SETS),
                        help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--resummarize", action="store_true",
                        help="recompute the summaries and heads of --out without scoring")
    parser.add_argument("--asset", action="store_true",
                        help=f"record the short training's tau in {ASSET.relative_to(ROOT)}")
    args = parser.parse_args()
    records = {(a["set"], a["name"]): a for a in generalization_records()}
    if args.resummarize:
        result = json.loads(args.out.read_text())
        finish(result, records, args.out, args.asset)
        return 0
    torch.set_num_threads(args.threads)
    task = load_task("fashion-mnist")
    ghn = load_ghn(None, "cpu")
    x_val, y_val = evaluation_tensors(task, "val", 1000, "cpu")
    batches = recalibration_batches(task, "cpu")
    training = training_batches(task, args.steps)
    truth = trained_accuracy(list(records.values()))
    sets = {**architecture_sets(task.spec.input_shape, task.spec.num_classes),
            "ranked": ranked_architectures(ghn, task.spec.input_shape, task.spec.num_classes,
                                           truth)}
    ways = ["service", *(f"finetune_lr{lr:g}" for lr in args.lrs), "random"]
    started = time.time()
    result: dict = {"benchmark": "finetune", "task": task.spec.name, "ghn": "bundled",
                    "steps": args.steps, "batch_size": SGD_BATCH_SIZE, "lrs": args.lrs,
                    "threads": args.threads, "torch": torch.__version__,
                    "ground_truth": GROUND_TRUTH.describe(), "sets": {}, "architectures": []}
    for name in args.sets.split(","):
        rows = []
        for graph in sets[name]:
            if graph.content_hash() not in truth:
                continue
            row = score(graph, ghn, task, batches, training, x_val, y_val, args.steps,
                        args.lrs)
            row.update(set=name, name=graph.name, truth=truth[graph.content_hash()])
            rows.append(row)
            print(json.dumps(row), flush=True)
        result["architectures"] += rows
    result["ways"] = ways
    result["seconds"] = time.time() - started
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finish(result, records, args.out, args.asset)
    return 0


def finish(result: dict, records: dict, out: Path, asset: bool = False) -> None:
    """Summaries per set, the choice of learning rate, the heads; written to ``out`` (and the
    short training's τ to :data:`ASSET`)."""
    rows = result["architectures"]
    head = RankingHead.load(HEAD)
    for r in rows:
        record = records.get((r["set"], r["name"]))
        if record is not None:
            r["served_head"] = head.predict(r["service"], record["parameters"],
                                            record[SERVICE_GRAD_NORM])
            r["sgd_1_epoch"] = record.get("sgd_1_epoch")
    ways = result.get("ways") or [w for w in rows[0] if w not in ("set", "name", "truth",
                                                                  *REFERENCES)
                                  and not w.endswith("_seconds")]
    result["ways"] = ways
    result["sets"] = {name: summarize(members, ways) for name in SETS
                      if (members := [r for r in rows if r["set"] == name])}
    if "in_distribution" in result["sets"]:
        result["chosen_on_in_distribution"] = max(
            (w for w in ways if w.startswith("finetune")), default=None,
            key=lambda w: result["sets"]["in_distribution"][w]["kendall_tau"])
    for r in rows:
        if (r["set"], r["name"]) in records:
            grad_norm = records[(r["set"], r["name"])][SERVICE_GRAD_NORM]
            r["log10_grad_norm"] = math.log10(max(grad_norm, 1e-12))
    if all(name in result["sets"] for name in HEAD_SETS):
        result["heads"] = head_analysis(rows)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["sets"].items():
        print(f"{name} ({s['architectures']}):")
        print(f"  trained accuracy: mean {s['truth_mean']:.4f}, best {TOP} "
              f"{s[f'top{TOP}_truth_best_possible']:.4f}")
        for way in ways:
            print(f"  {way:22s} mean {s[way]['mean']:.4f} tau {s[way]['kendall_tau']:+.3f} "
                  f"its top {TOP} trained {s[way][f'top{TOP}_truth']:.4f} "
                  f"{s[way]['seconds_mean']:.2f} s")
        for way in REFERENCES:
            if way in s:
                print(f"  {way:22s}             tau {s[way]['kendall_tau']:+.3f} "
                      f"its top {TOP} trained {s[way][f'top{TOP}_truth']:.4f}")
    if "heads" in result:
        print(f"heads fit on {result['heads']['fit_on']}:")
        for name, taus in result["heads"].items():
            if name != "fit_on":
                print(f"  {name:42s} " + "  ".join(f"{k} {v:+.3f}" for k, v in taus.items()))
    print(f"fine-tune chosen on in-distribution: {result.get('chosen_on_in_distribution')}; "
          f"wrote {out}")
    if asset:
        write_asset(result, out)


def write_asset(result: dict, out: Path) -> None:
    """The short training's (``random``) τ per set of ``result``, recorded in :data:`ASSET`
    under its task and steps; ``kendall_tau`` is the held-out families' (the set nothing was
    chosen on), the others are listed beside it."""
    sets = result["sets"]
    if "held_out_families" not in sets:
        raise SystemExit("--asset needs the held_out_families set")
    held_out = sets["held_out_families"]
    views = sorted({r["name"].split("/")[0] for r in result["architectures"]
                    if r["set"] == "held_out_families"})
    data = json.loads(ASSET.read_text()) if ASSET.exists() else {
        "format": "nas-short-training/1", "tasks": {}}
    data["tasks"].setdefault(result["task"], {})[str(result["steps"])] = {
        "kendall_tau": round(held_out["random"]["kendall_tau"], 4),
        "measured_on": f"{held_out['architectures']} networks of {' and '.join(views)}, families "
                       f"held out of the GHN's training (bench/finetune_bench.py); target: test "
                       f"accuracy after {result['ground_truth']}",
        "kendall_tau_by_set": {name: round(s["random"]["kendall_tau"], 4)
                               for name, s in sets.items()},
        "seconds_mean_by_set": {name: round(s["random"]["seconds_mean"], 3)
                                for name, s in sets.items()},
        "threads": result["threads"], "results": str(out.resolve().relative_to(ROOT)),
    }
    ASSET.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"recorded tau {held_out['random']['kendall_tau']:+.3f} in {ASSET}")


if __name__ == "__main__":
    raise SystemExit(main())
