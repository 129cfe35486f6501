"""The served GHN learns new tasks: Fashion-MNIST, then a Split and a Permuted Fashion-MNIST task,
with and without the output regulariser.

What the service does when a dataset is registered (``POST /v1/tasks``), run here in one process
on the bundled GHN: each added task is stored as a registered task (``nas_service.data.uploads``)
and learnt by :class:`nas_service.ghn.adaptation.TaskAdapter` with the settings of
``nas_service.search.adaptation`` (probe sets, architectures and image batches per step), then
every task so far is scored as the service scores it (``ArchitectureScorer``) on a fixed set of
held-out architectures of the cells space (seeds unused by adaptation).

Tasks, in order:

1. ``fashion-mnist``: the bundled GHN's own task;
2. ``fmnist-split-b``: Fashion-MNIST classes 5..9 (sandal, shirt, sneaker, bag, ankle boot),
   relabelled 0..4;
3. ``fmnist-permuted``: all ten classes under a fixed pixel permutation (``continual``'s seed 0).

For each variant (``--betas``: the paper's 0.01, the service's default, a stronger 1, and 0:
sequential fine-tuning) and
after each added task: each task's mean predicted accuracy over the held-out architectures, and
the Kendall τ of their scores against the scores the same task had right after it was learnt
(for ``fashion-mnist``: those of the bundled GHN): how much of each earlier task's ranking of
architectures survives. Also each stage's seconds and the drift of earlier tasks' probe
predictions.

    nice -n 10 python bench/task_adaptation_bench.py        # bench/results/task_adaptation_bench.json
    python bench/task_adaptation_bench.py --quick           # a smoke run (separate file)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nas_service.continual.tasks import pixel_permutations  # noqa: E402
from nas_service.data import (  # noqa: E402
    DecodedUpload,
    forget_task,
    load_task,
    register_task,
    store_task,
)
from nas_service.data.uploads import task_spec_for  # noqa: E402
from nas_service.ghn.adaptation import AdaptationConfig, TaskAdapter  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.search.adaptation import (  # noqa: E402
    STEP_SEED,
    probe_architectures,
    step_seeds,
)
from nas_service.spaces import get_space  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HELD_OUT_SEED = 500_000


def added_tasks(folder: Path, train_limit: int) -> list[DecodedUpload]:
    """The two added tasks' datasets, as an upload of them would decode."""
    data = load_task("fashion-mnist")
    x = data.train.images.numpy()
    y = data.train.labels.numpy()
    xt, yt = data.test.images.numpy(), data.test.labels.numpy()
    keep, keep_t = y >= 5, yt >= 5
    split = DecodedUpload("npz", x[keep][:train_limit], (y[keep] - 5)[:train_limit],
                          xt[keep_t], yt[keep_t] - 5, 5,
                          tuple(data.spec.class_names[5:]))
    perm = pixel_permutations(2, 28 * 28, 0)[1].numpy()
    permuted = DecodedUpload("npz", x.reshape(len(x), -1)[:train_limit][:, perm]
                             .reshape(-1, 1, 28, 28), y[:train_limit],
                             xt.reshape(len(xt), -1)[:, perm].reshape(-1, 1, 28, 28), yt, 10,
                             tuple(data.spec.class_names))
    return [split, permuted]


def held_out(spec: Any, count: int, max_flops: int) -> list:
    return [get_space("cells").sample(HELD_OUT_SEED + i, input_shape=spec.input_shape,
                                      num_classes=spec.num_classes, max_flops=max_flops)
            for i in range(count)]


def score_all(ghn: Any, specs: list, graphs: dict, eval_images: int) -> dict[str, list[float]]:
    scorer = ArchitectureScorer(ghn, ghn_version="bench", eval_images=eval_images,
                                recalibration_batches=2, recalibration_batch_size=64)
    out = {}
    for spec in specs:
        results = scorer.score(graphs[spec.name], spec)
        out[spec.name] = [r.accuracy if not isinstance(r, Exception) else float("nan")
                          for r in results]
    return out


def run_variant(beta: float, specs: list, args: argparse.Namespace, graphs: dict) -> dict:
    torch.manual_seed(0)
    ghn = load_ghn(device="cpu")
    base = specs[0]
    stages = []
    reference: dict[str, list[float]] = {}
    started = time.perf_counter()
    scores = score_all(ghn, specs[:1], graphs, args.eval_images)
    reference[base.name] = scores[base.name]
    stages.append(_stage("bundled GHN", scores, reference, 0.0, {}))
    for k, spec in enumerate(specs[1:], start=1):
        earlier = [None, *[s.name for s in specs[1:k]]]
        probes = {t: probe_architectures(("cells", "macro"), (base if t is None else next(
            s for s in specs if s.name == t)).input_shape, (base if t is None else next(
                s for s in specs if s.name == t)).num_classes, args.probes,
            max_flops=args.max_flops) for t in earlier}
        adapter = TaskAdapter(ghn, spec.name, probes, AdaptationConfig(
            steps=args.steps, beta=beta))
        data = load_task(spec.name)
        t0 = time.perf_counter()
        history = []
        for step in range(args.steps):
            graphs_step = [get_space(("cells", "macro")[s % 2]).sample(
                s, input_shape=spec.input_shape, num_classes=spec.num_classes,
                max_flops=args.max_flops) for s in step_seeds(step, args.batch_graphs)]
            gen = torch.Generator().manual_seed(STEP_SEED + step)
            idx = torch.randint(0, len(data.train), (args.batch_images,), generator=gen)
            torch.manual_seed(STEP_SEED + step)
            history.append(adapter.train_step(
                graphs_step, data.normalize(data.train.images.index_select(0, idx)),
                data.train.labels.index_select(0, idx)))
        seconds = time.perf_counter() - t0
        drift = {t or base.name: v for t, v in adapter.drift().items()}
        scores = score_all(ghn, specs[:k + 1], graphs, args.eval_images)
        reference.setdefault(spec.name, scores[spec.name])
        stage = _stage(f"after {spec.name}", scores, reference, seconds, drift)
        stage["train_loss_last"] = float(np.mean([h["loss"] for h in history[-5:]]))
        stages.append(stage)
        print(json.dumps({"beta": beta, **stage}), flush=True)
    return {"beta": beta, "stages": stages, "seconds": time.perf_counter() - started}


def _stage(name: str, scores: dict, reference: dict, seconds: float, drift: dict) -> dict:
    tasks = {}
    for task, values in scores.items():
        ref = reference[task]
        tasks[task] = {"mean_predicted_accuracy": float(np.nanmean(values)),
                       "kendall_tau_vs_first": float(kendall_tau(ref, values)),
                       "mean_change_vs_first": float(np.nanmean(values) - np.nanmean(ref)),
                       "scores": values}
    return {"stage": name, "adaptation_seconds": seconds, "drift": drift, "tasks": tasks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--betas", default="0.01,1,0",
                        help="comma-separated β of the variants (0: sequential fine-tuning)")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--batch-graphs", type=int, default=2)
    parser.add_argument("--batch-images", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=6)
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument("--max-flops", type=int, default=5_000_000)
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.held_out, args.eval_images, args.probes = 2, 3, 100, 2
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="task-adaptation-bench-"))
    specs = [load_task("fashion-mnist").spec]
    for name, upload in zip(("fmnist-split-b", "fmnist-permuted"),
                            added_tasks(folder, args.train_limit), strict=True):
        spec = task_spec_for(name, upload, folder / name)
        store_task(spec, upload)
        specs.append(register_task(spec))
    graphs = {s.name: held_out(s, args.held_out, args.max_flops) for s in specs}
    try:
        variants = [run_variant(float(beta), specs, args, graphs)
                    for beta in args.betas.split(",")]
    finally:
        for spec in specs[1:]:
            forget_task(spec.name)
    result = {"command": " ".join(["python", "bench/task_adaptation_bench.py", *sys.argv[1:]]),
              "settings": {k: v for k, v in vars(args).items() if k != "quick"},
              "tasks": [s.name for s in specs], "variants": variants,
              "torch_threads": torch.get_num_threads()}
    out = RESULTS / ("task_adaptation_bench_quick.json" if args.quick
                     else "task_adaptation_bench.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
