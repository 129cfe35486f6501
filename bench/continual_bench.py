"""Continual learning on Fashion-MNIST: task-conditioned hypernetworks against the baselines.

Two benchmarks with the task given at test time, on the same target network (MLP
784-100-100, one output head per task) and the same budget (``--steps`` Adam steps of 128
images per task, learning rate 1e-3):

* **Split Fashion-MNIST**: 5 tasks of 2 classes ((0,1), (2,3), …), multi-head;
* **Permuted Fashion-MNIST**: 10 tasks of all 10 classes, task 1 unpermuted, the others under
  fixed pixel permutations (seed 0);
* **Split Fashion-MNIST with a small CNN** (``split-cnn``) as the target network instead.

Methods (defined in ``nas_service.continual.experiment``): the hypernetworks (chunked and full;
on Permuted also a larger chunked one; β as the paper's code), plain
sequential fine-tuning (lower bound), EWC, online EWC, SI, and multi-task training on all tasks
at once (upper bound, the same number of training images in all). For each: the test accuracy
of every task after the last one and its mean, task 1's accuracy after each task, forgetting
(mean over tasks 1..T−1 of best-ever minus final accuracy), seconds, and trainable parameters
(hypernetwork + task embeddings against one target network: the compression ratio).

The harder setting: on Split Fashion-MNIST the task is also *inferred* at test time, each image
going to the task whose prediction has the lowest entropy (the paper's HNET+ENT), for every
method's final networks; an image counts as right if its task and class both are.

    python bench/continual_bench.py            # writes bench/results/continual_bench.json
    python bench/continual_bench.py --quick    # a smoke run (tiny budget, separate file)
    python bench/continual_bench.py --markdown # the results file's tables, as in docs/continual.md

``--benchmarks`` / ``--methods`` run a part; the results of each method are merged into the
output file as soon as they exist, so two processes may run different benchmarks at once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.processes import ROOT, machine_info, relative

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas_service.continual import (  # noqa: E402
    BENCHMARKS,
    TrainingSettings,
    benchmark_methods,
    benchmark_tasks,
    run_method,
)
from nas_service.continual.experiment import DEFAULT_STEPS, TARGET_DESCRIPTIONS  # noqa: E402
from nas_service.data import load_task  # noqa: E402

OUT = ROOT / "bench" / "results" / "continual_bench.json"
QUICK_OUT = ROOT / "bench" / "results" / "continual_bench_quick.json"


def merge(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write ``path`` under an exclusive lock (two runs may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.exists() else {}
        update(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n")


def record(path: Path, benchmark: str, method: str, info: dict[str, Any],
           result: dict[str, Any]) -> None:
    def update(doc: dict[str, Any]) -> None:
        section = doc.setdefault("benchmarks", {}).setdefault(benchmark, {"methods": {}})
        section.update(info)
        section["methods"][method] = result

    merge(path, update)


def summarise(doc: dict[str, Any]) -> None:
    for benchmark, section in doc.get("benchmarks", {}).items():
        print(f"\n{benchmark}: {section['tasks']} tasks, {section['steps_per_task']} steps/task")
        print(f"{'method':20s} {'avg acc':>8s} {'forget':>7s} {'task-1 fgt':>10s} "
              f"{'inferred':>9s} {'params':>10s} {'ratio':>6s} {'s':>6s}")
        for name, m in section["methods"].items():
            p = m["parameters"]
            params = p.get("network", p.get("hypernetwork", 0) + p.get("task_embeddings", 0))
            ratio = f"{p['compression']:.2f}" if "compression" in p else ""
            print(f"{name:20s} {m['average_accuracy']:8.2f} {m.get('forgetting', ''):>7} "
                  f"{m.get('task1_forgetting', ''):>10} {m.get('task_inferred_accuracy', ''):>9} "
                  f"{params:10d} {ratio:>6s} {m['seconds']:6.0f}")


LABELS = {"hnet-chunked": "hypernetwork, chunked", "hnet-full": "hypernetwork, full",
          "hnet-chunked-large": "hypernetwork, chunked (large)", "finetune": "fine-tuning",
          "ewc": "EWC", "online-ewc": "online EWC", "si": "SI",
          "multitask": "multi-task (upper bound)"}


def markdown(doc: dict[str, Any]) -> str:
    """The tables of docs/continual.md, from the results file."""
    parts = []
    for benchmark, section in doc.get("benchmarks", {}).items():
        inferred = benchmark.startswith("split")
        head = ["method", "average accuracy", "forgetting", "task 1 after each task",
                "task-1 forgetting"] + (["task inferred"] if inferred else []) + [
                "trainable numbers (ratio to target)", "s"]
        lines = [f"**{benchmark}** ({section['tasks']} tasks, {section['steps_per_task']} steps "
                 f"per task, {section['test_images_per_task']} test images per task):", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        order = [m for m in benchmark_methods(benchmark) if m in section["methods"]]
        for name in order + [m for m in section["methods"] if m not in order]:
            m = section["methods"][name]
            p = m["parameters"]
            if "compression" in p:
                count = p["hypernetwork"] + p["task_embeddings"]
                size = f"{count:,} ({p['compression']:.2f})"
            else:
                size = f"{p['network']:,}"
            row = [LABELS.get(name, name), f"{m['average_accuracy']:.2f}",
                   f"{m['forgetting']:.2f}" if "forgetting" in m else "–",
                   " / ".join(f"{a:.1f}" for a in m["task1_after_each"])
                   if "task1_after_each" in m else "–",
                   f"{m['task1_forgetting']:.2f}" if "task1_forgetting" in m else "–"]
            if inferred:
                row.append(f"{m['task_inferred_accuracy']:.2f}")
            row += [size, f"{m['seconds']:.0f}"]
            lines.append("| " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="a subset of the methods (default: all of each benchmark)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps per task (default: 600, split-cnn 300; --quick: 30)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 steps, 3 permuted "
                        "tasks, 500 test images per task, written to a separate file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true",
                        help="print the results file's tables as markdown and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((args.out or (QUICK_OUT if args.quick else OUT)).read_text())))
        return
    torch.set_num_threads(1)
    out = args.out or (QUICK_OUT if args.quick else OUT)
    command = "python " + " ".join([relative(Path(__file__).resolve()), *sys.argv[1:]])

    for benchmark in args.benchmarks:
        methods = benchmark_methods(benchmark)
        if args.methods:
            unknown = set(args.methods) - {m for b in BENCHMARKS for m in benchmark_methods(b)}
            if unknown:
                parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
            methods = [m for m in methods if m in args.methods]
        steps = args.steps or (30 if args.quick else DEFAULT_STEPS[benchmark])
        settings = TrainingSettings(steps=steps, batch_size=128, lr=1e-3, seed=args.seed)
        tasks = benchmark_tasks(benchmark, load_task("fashion-mnist"), quick=args.quick)
        info = {"tasks": len(tasks), "steps_per_task": settings.steps,
                "batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed,
                "target": TARGET_DESCRIPTIONS[benchmark],
                "test_images_per_task": len(tasks[0].test_y)}
        for method in methods:
            start = time.perf_counter()
            result = run_method(benchmark, method, tasks, settings, progress=True)
            print(f"{benchmark} {method}: average {result['average_accuracy']} %, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)

            record(out, benchmark, method, info, {**result, "command": command,
                                                  "machine": machine_info()})
    summarise(json.loads(out.read_text()))
    print(f"\nwrote {relative(out)}")


if __name__ == "__main__":
    main()
