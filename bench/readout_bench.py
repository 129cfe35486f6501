"""The classifier's readout (``nas_service.scoring.evaluation.fit_readout``): logistic regression
at several penalties against a least-squares (ridge) readout, on the same predicted features.

    python bench/readout_bench.py          # writes bench/results/readout_bench.json

Two sets, bundled GHN, Fashion-MNIST, 1,000 validation images, 512 labelled recalibration
images (the service's protocol):

* ``tuning``: 26 architectures no other benchmark uses (``cells``/``macro`` seeds 100-107 and
  ``families[-densenet,-inception,-convmixer]`` seeds 100-109), on which the penalty was chosen;
* ``ranked``: the 39 held-out ``cells``/``macro`` architectures with 5-epoch ground truth
  (``bench/results/ranking-fashion-mnist/ground-truth.json``), on which each readout's mean
  accuracy and Kendall tau against trained accuracy are reported, out of sample;
* ``reference``: the reference zoo (``nas_service.zoo``: ResNet-18/50, MobileNetV2, DenseNet-BC,
  a small ViT, an MLP), whose classifiers are the widest here (up to 2,048 features).

Each network is predicted and recalibrated once; the classifier's features on the recalibration
images and on the validation images are read once and every readout is fit on the same features.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.ranked import ranked_architectures, ranked_truth  # noqa: E402

from nas_service.data import load_task  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.graph import from_module, to_module  # noqa: E402
from nas_service.scoring.evaluation import (  # noqa: E402
    READOUT_L2,
    _logistic_regression,
    classifier_of,
    feature_standardisation,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402
from nas_service.training.evaluate import evaluation_tensors  # noqa: E402
from nas_service.training.generalization import (  # noqa: E402
    SAMPLING_BOUNDS,
    TRAINED_FAMILIES_SPACE,
)
from nas_service.zoo import evaluation_models  # noqa: E402

OUT = ROOT / "bench" / "results" / "readout_bench.json"
LOGISTIC_PENALTIES = (1e-4, 1e-3, 1e-2)
RIDGE_PENALTIES = (0.01, 0.1, 1.0)
"""Ridge penalties relative to the number of images, as a least-squares readout takes them."""


def ridge_logits(z: torch.Tensor, y: torch.Tensor, zv: torch.Tensor, classes: int,
                 l2: float) -> torch.Tensor:
    n, d = z.shape
    t = F.one_hot(y, classes).double()
    t = t - t.mean(0)
    if d <= n:
        w = torch.linalg.solve(z.T @ z + l2 * n * torch.eye(d, dtype=z.dtype), z.T @ t)
    else:
        w = z.T @ torch.linalg.solve(z @ z.T + l2 * n * torch.eye(n, dtype=z.dtype), t)
    return zv @ w


def readouts(graph, ghn, task, x_val, y_val) -> dict[str, float] | None:
    """Every readout's validation accuracy for one architecture (``None``: no linear
    classifier to refit)."""
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    net = load_parameters(to_module(graph, initialize=False), params)
    images, labels = zip(*recalibration_batches(task, "cpu"), strict=True)
    x, y = torch.cat(images), torch.cat(labels)
    with torch.no_grad():
        recalibrate(net, images)
        train = classifier_of(net, x)
        val = classifier_of(net, x_val)
    if train is None or val is None:
        return None
    features = train[1].double()
    mean, std = feature_standardisation(features)  # as the service's readout standardises
    z, zv = (features - mean) / std, (val[1].double() - mean) / std
    classes = train[0].out_features
    out: dict[str, float] = {"features": z.shape[1]}
    for l2 in RIDGE_PENALTIES:
        pred = ridge_logits(z, y, zv, classes, l2).argmax(1)
        out[f"ridge({l2:g})"] = (pred == y_val).double().mean().item()
    for l2 in LOGISTIC_PENALTIES:
        t0 = time.perf_counter()
        w, b = _logistic_regression(z, y, classes, l2=l2, bias=True)
        out[f"seconds_logistic({l2:g})"] = time.perf_counter() - t0
        pred = (zv @ w + b).argmax(1)
        out[f"logistic({l2:g})"] = (pred == y_val).double().mean().item()
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
    truth = ranked_truth()
    sets = {
        "tuning": [get_space(space).sample(seed, shape, classes, **SAMPLING_BOUNDS)
                   for space, seeds in (("cells", range(100, 108)), ("macro", range(100, 108)),
                                        (TRAINED_FAMILIES_SPACE, range(100, 110)))
                   for seed in seeds],
        "ranked": ranked_architectures(ghn, shape, classes, truth),
        "reference": [from_module(make().eval(), shape, name=name)
                      for name, make in evaluation_models(shape, classes)[0].items()],
    }
    started = time.time()
    result: dict = {"benchmark": "readout", "task": task.spec.name, "ghn": "bundled",
                    "served_penalty": READOUT_L2, "threads": args.threads,
                    "torch": torch.__version__, "sets": {}, "architectures": []}
    for name, graphs in sets.items():
        rows = []
        for graph in graphs:
            row = readouts(graph, ghn, task, x_val, y_val)
            if row is None:
                continue
            row.update(set=name, name=graph.name, truth=truth.get(graph.content_hash()))
            rows.append(row)
            print(json.dumps(row), flush=True)
        keys = [k for k in rows[0] if k.startswith(("ridge(", "logistic("))]
        summary = {}
        for key in keys:
            summary[key] = {"mean": statistics.fmean(r[key] for r in rows)}
            if all(r["truth"] is not None for r in rows):
                summary[key]["kendall_tau"] = kendall_tau([r[key] for r in rows],
                                                          [r["truth"] for r in rows])
        result["sets"][name] = {"architectures": len(rows), "readouts": summary}
        result["architectures"] += rows
    result["seconds"] = time.time() - started
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["sets"].items():
        for key, v in s["readouts"].items():
            tau = f"  tau {v['kendall_tau']:.3f}" if "kendall_tau" in v else ""
            print(f"{name:7s} {key:16s} mean {v['mean']:.4f}{tau}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
