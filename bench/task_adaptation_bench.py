"""The served GHN learns new datasets without forgetting the ones it scores: Fashion-MNIST, then
a Split and a Permuted Fashion-MNIST task, then CIFAR-10, each added as ``POST /v1/tasks`` adds
it (issue 14's demonstration).

Tasks, in order:

1. ``fashion-mnist``: the bundled GHN's own task;
2. ``fmnist-split-b``: Fashion-MNIST classes 5..9 (sandal, shirt, sneaker, bag, ankle boot),
   relabelled 0..4;
3. ``fmnist-permuted``: all ten classes under a fixed pixel permutation (``continual``'s seed 0);
4. ``cifar10-small``: a seeded 10,000-image subset of CIFAR-10's training set (3 x 32 x 32),
   tested on 2,000 of its test images (``--cifar10``: a folder with the standard files or the
   team's ``train_part*.npz``/``test.npz``; the data is read, never shipped).

Each added task is stored and registered as an upload of it would be (``nas_service.data``) and
learnt as the service's adaptation job learns it (:class:`nas_service.ghn.adaptation.TaskAdapter`
with :func:`nas_service.search.adaptation.step_batch` and the probe sets of
``probe_architectures``, the job's default :class:`AdaptationSettings` but ``--steps`` and the
learning rate of the GHN's weights). The
variants, all from the bundled GHN with the same number of steps per added task:

* ``regularized``: the GHN's weights adapted too (``--lr``, 1e-4), with the output regulariser
  (``--beta``, 0.01) on the earlier tasks' probe sets (the service with ``NAS_ADAPTATION_LR``
  above 0);
* ``embedding``: only each task's embedding is learnt (``lr = 0``, the service's default): the
  GHN's weights stay as they are, so earlier tasks cannot change at all;
* ``sequential``: the same as ``regularized`` with ``β = 0``, plain sequential fine-tuning (the
  lower bound);
* ``joint``: one GHN trained on all four tasks at once, a step of each in turn, for as many steps
  as the sequential variants take together (the upper bound: it sees every task's data all along);
* ``alone``: each added task learnt from the bundled GHN by itself: the reference for a new
  task's accuracy (for the first added task this is the ``sequential`` variant's first stage,
  which is the same computation, and is taken from it).

After each added task every task so far is scored as the service scores it
(``ArchitectureScorer``: predicted parameters, recalibrated, readout; ``--eval-images`` validation
images) on held-out architectures no adaptation saw: for ``fashion-mnist`` the 39 ``cells``/``macro``
architectures with trained ground truth (``bench/results/ranking-fashion-mnist/ground-truth.json``,
5 epochs), so its Kendall tau against trained accuracy is measured; for the added tasks
``--held-out`` architectures of the same spaces shaped for them. Reported per task: the mean
predicted accuracy, the Kendall tau of the scores against the task's scores right after it was
learnt (how much of its ranking of architectures survives), and for ``fashion-mnist`` the tau
against trained accuracy. The summary checks issue 14's targets: every earlier task within 1
point of its mean and 0.02 of its tau after all additions; each new task within 5 points of
``alone``; the seconds an addition takes.

    nice -n 5 python bench/task_adaptation_bench.py             # bench/results/task_adaptation_bench.json
    python bench/task_adaptation_bench.py --quick               # a smoke run (separate file)

A run writes its file after each variant; ``--resume`` keeps the variants a file already holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nas_service.continual.tasks import pixel_permutations  # noqa: E402
from nas_service.data import (  # noqa: E402
    DecodedUpload,
    TaskData,
    TaskSpec,
    forget_task,
    load_task,
    register_task,
    store_task,
)
from nas_service.data.uploads import task_spec_for  # noqa: E402
from nas_service.ghn import GraphHyperNetwork  # noqa: E402
from nas_service.ghn.adaptation import AdaptationConfig, TaskAdapter, meta_loss  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.graph import ArchitectureGraph  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.search.adaptation import (  # noqa: E402
    AdaptationSettings,
    probe_architectures,
    step_batch,
)
from nas_service.training.ghn_training import sample_architectures  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GROUND_TRUTH = RESULTS / "ranking-fashion-mnist" / "ground-truth.json"
TRUTH_EPOCHS = 5
CIFAR_TRAIN, CIFAR_TEST = 10_000, 2_000


# ---- the tasks ------------------------------------------------------------------------------

def fashion_uploads(train_limit: int) -> dict[str, DecodedUpload]:
    """The Split and Permuted Fashion-MNIST tasks, as an upload of them would decode."""
    data = load_task("fashion-mnist")
    x, y = data.train.images.numpy(), data.train.labels.numpy()
    xt, yt = data.test.images.numpy(), data.test.labels.numpy()
    keep, keep_t = y >= 5, yt >= 5
    split = DecodedUpload("npz", x[keep][:train_limit], (y[keep] - 5)[:train_limit],
                          xt[keep_t], yt[keep_t] - 5, 5, tuple(data.spec.class_names[5:]))
    perm = pixel_permutations(2, 28 * 28, 0)[1].numpy()

    def permute(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1)[:, perm].reshape(-1, 1, 28, 28)

    permuted = DecodedUpload("npz", permute(x[:train_limit]), y[:train_limit], permute(xt), yt,
                             10, tuple(data.spec.class_names))
    return {"fmnist-split-b": split, "fmnist-permuted": permuted}


def cifar_upload(folder: Path) -> DecodedUpload:
    """A seeded 10,000-image subset of CIFAR-10's training images and 2,000 of its test images
    (the team's ``train_part*.npz``/``test.npz``, HWC uint8)."""
    parts = sorted(folder.glob("train_part*.npz"))
    if not parts or not (folder / "test.npz").is_file():
        raise FileNotFoundError(f"no CIFAR-10 train_part*.npz + test.npz in {folder}")
    x = np.concatenate([np.load(p)["x"] for p in parts])
    y = np.concatenate([np.load(p)["y"] for p in parts])
    test = np.load(folder / "test.npz")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(x))[:CIFAR_TRAIN]
    pick_t = rng.permutation(len(test["x"]))[:CIFAR_TEST]
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")
    return DecodedUpload("npz", x[pick].transpose(0, 3, 1, 2).copy(), y[pick].astype(np.int64),
                         test["x"][pick_t].transpose(0, 3, 1, 2).copy(),
                         test["y"][pick_t].astype(np.int64), 10, names)


def register_added_tasks(folder: Path, args: argparse.Namespace) -> list[TaskSpec]:
    uploads = fashion_uploads(args.train_limit)
    if args.cifar10 is not None:
        try:
            uploads["cifar10-small"] = cifar_upload(args.cifar10)
        except FileNotFoundError as e:
            print(f"CIFAR-10 task left out: {e}", flush=True)
    specs = []
    for name, upload in uploads.items():
        spec = task_spec_for(name, upload, folder / name)
        store_task(spec, upload)
        specs.append(register_task(spec))
    return specs


# ---- held-out architectures and scores ------------------------------------------------------

class Evaluation:
    """Each task's held-out architectures, and the scores of a GHN on them."""

    def __init__(self, specs: list[TaskSpec], settings: AdaptationSettings,
                 spaces: tuple[str, ...], args: argparse.Namespace) -> None:
        self.eval_images = args.eval_images
        truth = _fashion_truth()
        base = specs[0]
        graphs = sample_architectures(spaces, list(range(50)), base.input_shape,
                                      base.num_classes, settings.max_parameters,
                                      settings.max_flops)
        kept = [g for g in graphs if g.content_hash() in truth][:args.truth_architectures]
        self.truth = [truth[g.content_hash()] for g in kept]
        self.graphs: dict[str, list[ArchitectureGraph]] = {base.name: kept}
        for spec in specs[1:]:
            self.graphs[spec.name] = sample_architectures(
                spaces, list(range(args.held_out)), spec.input_shape, spec.num_classes,
                settings.max_parameters, settings.max_flops)

    def scores(self, ghn: GraphHyperNetwork, specs: list[TaskSpec]) -> dict[str, list[float]]:
        scorer = ArchitectureScorer(ghn, ghn_version="bench", eval_images=self.eval_images)
        out = {}
        for spec in specs:
            results = scorer.score(self.graphs[spec.name], spec)
            out[spec.name] = [r.accuracy if not isinstance(r, Exception) else float("nan")
                              for r in results]
        return out


def _fashion_truth() -> dict[str, float]:
    """Trained accuracy (5 epochs) of the held-out architectures, by graph hash."""
    cache = json.loads(GROUND_TRUTH.read_text())
    out = {}
    for key, record in cache.items():
        parts = key.split("|")
        if len(parts) == 5 and parts[2] == str(TRUTH_EPOCHS):
            out[parts[0]] = float(record["accuracy"])
    return out


def stage(name: str, scores: dict[str, list[float]], first: dict[str, list[float]],
          evaluation: Evaluation, seconds: float, extra: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    tasks = {}
    for task, values in scores.items():
        ref = first[task]
        row = {"mean_predicted_accuracy": float(np.nanmean(values)),
               "change_points": 100 * float(np.nanmean(values) - np.nanmean(ref)),
               "kendall_tau_vs_first": float(kendall_tau(ref, values)),
               "scores": values}
        if task == "fashion-mnist":
            row["kendall_tau_vs_trained"] = float(kendall_tau(evaluation.truth, values))
        tasks[task] = row
    out = {"stage": name, "adaptation_seconds": seconds, "tasks": tasks, **(extra or {})}
    print(json.dumps({k: v for k, v in out.items() if k != "tasks"}
                     | {"tasks": {t: {k: round(v, 4) for k, v in r.items() if k != "scores"}
                                  for t, r in tasks.items()}}), flush=True)
    return out


# ---- the variants ---------------------------------------------------------------------------

def _data(specs: list[TaskSpec]) -> dict[str, TaskData]:
    return {s.name: load_task(s.name) for s in specs}


def run_sequence(beta: float, lr: float, specs: list[TaskSpec], data: dict[str, TaskData],
                 settings: AdaptationSettings, spaces: tuple[str, ...],
                 evaluation: Evaluation, *, only: TaskSpec | None = None) -> dict[str, Any]:
    """The bundled GHN learning the added tasks one after the other (``only``: that one task
    alone), scored after each."""
    torch.manual_seed(0)
    ghn = load_ghn(device="cpu")
    base = specs[0]
    added = [only] if only is not None else specs[1:]
    first: dict[str, list[float]] = {}
    stages = []
    if only is None:
        first.update(evaluation.scores(ghn, [base]))
        stages.append(stage("bundled GHN", first, first, evaluation, 0.0))
    started = time.perf_counter()
    for k, spec in enumerate(added):
        earlier: list[TaskSpec] = [base, *added[:k]]
        probes = {(None if s is base else s.name): probe_architectures(
            spaces, s.input_shape, s.num_classes, settings.probe_architectures,
            max_parameters=settings.max_parameters, max_flops=settings.max_flops)
            for s in earlier}
        adapter = TaskAdapter(ghn, spec.name, probes, AdaptationConfig(
            steps=settings.steps, beta=beta, lr=lr, embedding_lr=settings.embedding_lr))
        t0 = time.perf_counter()
        history = [adapter.train_step(*step_batch(step, data[spec.name], settings, spaces))
                   for step in range(settings.steps)]
        seconds = time.perf_counter() - t0
        scored = [spec] if only is not None else [*earlier, spec]
        scores = evaluation.scores(ghn, scored)
        first.setdefault(spec.name, scores[spec.name])
        stages.append(stage(f"after {spec.name}", scores, first, evaluation, seconds, {
            "seconds_per_step": seconds / max(settings.steps, 1),
            "train_loss_last_10": float(np.mean([h["loss"] for h in history[-10:]])),
            "regularizer_last_10": float(np.mean([h["regularizer"] for h in history[-10:]])),
            "drift": {(t or base.name): v for t, v in adapter.drift().items()}}))
    return {"stages": stages, "seconds": time.perf_counter() - started}


def run_joint(lr: float, specs: list[TaskSpec], data: dict[str, TaskData], settings: AdaptationSettings,
              spaces: tuple[str, ...], evaluation: Evaluation) -> dict[str, Any]:
    """One GHN trained on every task at once: step ``i`` is task ``i mod T``'s ``i // T``-th
    batch; as many steps as the sequential variants take together."""
    torch.manual_seed(0)
    ghn = load_ghn(device="cpu")
    embeddings = [ghn.add_task(s.name) for s in specs[1:]]
    optimizer = torch.optim.Adam([{"params": list(ghn.parameters()), "lr": lr},
                                  {"params": embeddings, "lr": settings.embedding_lr}])
    total = settings.steps * (len(specs) - 1)
    nets: dict[str, Any] = {}
    t0 = time.perf_counter()
    losses: dict[str, list[float]] = {s.name: [] for s in specs}
    for i in range(total):
        spec = specs[i % len(specs)]
        graphs, images, labels = step_batch(i // len(specs), data[spec.name], settings, spaces)
        ghn.train()
        loss, _ = meta_loss(ghn, graphs, images, labels,
                            None if spec is specs[0] else spec.name, nets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*ghn.parameters(), *embeddings],
                                       AdaptationConfig.grad_clip)
        optimizer.step()
        losses[spec.name].append(float(loss.detach()))
    ghn.eval()
    seconds = time.perf_counter() - t0
    scores = evaluation.scores(ghn, specs)
    return {"stages": [stage("after all tasks at once", scores, scores, evaluation, seconds, {
        "steps": total,
        "train_loss_last_10": {t: float(np.mean(v[-10:])) for t, v in losses.items() if v}})],
        "seconds": seconds}


# ---- the summary ----------------------------------------------------------------------------

def summarise(variants: dict[str, Any], specs: list[TaskSpec],
              settings: AdaptationSettings) -> dict[str, Any]:
    names = [s.name for s in specs]
    alone = {}
    if "alone" in variants:
        for st in variants["alone"]["stages"]:
            alone.update({t: r["mean_predicted_accuracy"] for t, r in st["tasks"].items()})
    if "sequential" in variants and names[1] not in alone:
        alone[names[1]] = variants["sequential"]["stages"][1]["tasks"][names[1]][
            "mean_predicted_accuracy"]
    out: dict[str, Any] = {"alone_mean_predicted_accuracy": alone}
    for variant in ("regularized", "embedding", "sequential", "joint"):
        if variant not in variants:
            continue
        final = variants[variant]["stages"][-1]["tasks"]
        rows = {}
        for k, task in enumerate(names):
            r = final[task]
            row: dict[str, Any] = {"mean_predicted_accuracy": r["mean_predicted_accuracy"]}
            if variant != "joint":
                learnt = next(st for st in variants[variant]["stages"] if task in st["tasks"])
                row["when_learnt"] = learnt["tasks"][task]["mean_predicted_accuracy"]
                row["change_points"] = r["change_points"]
                row["kendall_tau_vs_first"] = r["kendall_tau_vs_first"]
                if k < len(names) - 1:
                    row["kept"] = (abs(r["change_points"]) <= 1.0
                                   and r["kendall_tau_vs_first"] >= 0.98)
            if "kendall_tau_vs_trained" in r:
                row["kendall_tau_vs_trained"] = r["kendall_tau_vs_trained"]
            if task in alone:
                row["points_behind_alone"] = 100 * (alone[task] - r["mean_predicted_accuracy"]
                                                    if variant == "joint" else
                                                    alone[task] - row["when_learnt"])
            rows[task] = row
        added = [st for st in variants[variant]["stages"] if st.get("seconds_per_step")]
        per_step = (float(np.mean([st["seconds_per_step"] for st in added])) if added
                    else None)
        out[variant] = {"tasks": rows, "seconds_per_step": per_step,
                        "minutes_per_task_at_service_default_steps": (
                            per_step * AdaptationSettings().steps / 60 if per_step else None)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60,
                        help="adaptation steps per added task (the service's default: "
                             f"{AdaptationSettings().steps})")
    parser.add_argument("--beta", type=float, default=AdaptationSettings().beta)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="of the GHN's weights, in the variants that adapt them")
    parser.add_argument("--variants", default="regularized,embedding,sequential,alone,joint")
    parser.add_argument("--held-out", type=int, default=12,
                        help="held-out architectures of each added task")
    parser.add_argument("--truth-architectures", type=int, default=39,
                        help="of the 39 fashion-mnist architectures with ground truth")
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--train-limit", type=int, default=10_000,
                        help="training images of the Split and Permuted tasks")
    parser.add_argument("--cifar10", type=Path, default=ROOT.parent / "shared/data/cifar10",
                        help="CIFAR-10 folder; 'none' leaves the task out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if str(args.cifar10).lower() == "none":
        args.cifar10 = None
    if args.quick:
        args.steps, args.held_out, args.truth_architectures, args.eval_images = 2, 3, 4, 100
    torch.set_num_threads(args.threads)
    out = RESULTS / ("task_adaptation_bench_quick.json" if args.quick
                     else "task_adaptation_bench.json")
    settings = replace(AdaptationSettings(), steps=args.steps)
    ghn_record = getattr(load_ghn(device="cpu"), "training_record", {}) or {}
    spaces = tuple(ghn_record.get("config", {}).get("spaces") or ("cells",))
    folder = Path(tempfile.mkdtemp(prefix="task-adaptation-bench-"))
    specs = [load_task("fashion-mnist").spec, *register_added_tasks(folder, args)]
    done: dict[str, Any] = {}
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("settings", {}).get("steps") == args.steps:
            done = previous.get("variants", {})
    evaluation = Evaluation(specs, settings, spaces, args)
    data = _data(specs)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "regularized": lambda: run_sequence(args.beta, args.lr, specs, data, settings,
                                            spaces, evaluation),
        "embedding": lambda: run_sequence(0.0, 0.0, specs, data, settings, spaces, evaluation),
        "sequential": lambda: run_sequence(0.0, args.lr, specs, data, settings, spaces,
                                           evaluation),
        "alone": lambda: {"stages": [st for spec in specs[2:] for st in run_sequence(
            0.0, args.lr, specs, data, settings, spaces, evaluation, only=spec)["stages"]]},
        "joint": lambda: run_joint(args.lr, specs, data, settings, spaces, evaluation),
    }
    try:
        for variant in args.variants.split(","):
            if variant in done:
                continue
            print(f"--- {variant}", flush=True)
            done[variant] = runs[variant]()
            report = {
                "command": " ".join(["python", "bench/task_adaptation_bench.py", *sys.argv[1:]]),
                "settings": {**vars(args), "cifar10": str(args.cifar10), "adaptation":
                             settings.record(), "spaces": list(spaces)},
                "tasks": [{"name": s.name, "input_shape": list(s.input_shape),
                           "classes": s.num_classes} for s in specs],
                "variants": done, "summary": summarise(done, specs, settings),
                "torch_threads": torch.get_num_threads()}
            out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        for spec in specs[1:]:
            forget_task(spec.name)
    print(json.dumps(summarise(done, specs, settings), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
