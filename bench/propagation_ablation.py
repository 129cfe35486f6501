"""Propagation ablation: synchronous rounds with virtual edges (ours) against GHN-2's sequential
node-by-node traversal, trained the same way, on quality and speed.

Both variants are trained from scratch by ``nas-service train-ghn`` with the same seed, steps,
meta-batches, images and learning-rate schedule (so they see exactly the same architectures and
images, step for step); only ``--propagation`` (and ``--layers``: 4 synchronous rounds against
GHN-2's one forward-backward traversal) differs. Quality is the trainer's periodic validation
(mean accuracy of 16 held-out architectures with predicted parameters on 2,000 validation
images); cost is the trainer's seconds per step. Inference speed is the GHN forward pass alone
(featurisation included) on a ResNet-50 and a 20-cell DARTS network with each variant's trained
weights, 2 threads, median of 5.

Runs are resumable (the run folders under ``--runs``): rerunning continues them.

    python bench/propagation_ablation.py --steps 400   # writes bench/results/propagation_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.processes import ROOT, machine_info, median_seconds, nas_service_command, relative

sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "propagation_ablation.json"
VARIANTS = {
    "synchronous": ["--propagation", "synchronous", "--layers", "4"],
    "sequential": ["--propagation", "sequential", "--layers", "1"],
}


def train(variant: str, args: argparse.Namespace) -> Path:
    out = args.runs / variant
    command = nas_service_command(
        "train-ghn", "--out", str(out), "--steps", str(args.steps),
        "--validate-every", str(args.validate_every), "--seed", str(args.seed),
        "--no-progress", *VARIANTS[variant])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("+", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env=env)
    return out


def training_record(run: Path) -> dict[str, Any]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
    steps = [r for r in lines if "seconds_per_step" in r]
    validation = [{"step": r["step"], "val_accuracy": r["val_accuracy"]}
                  for r in lines if "val_accuracy" in r]
    last = steps[-10:]  # the last 100 steps (logged every 10): the loss near the end
    return {"run": relative(run), "validation": validation,
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in steps),
            "final_train_loss": statistics.fmean(r["loss"] for r in last),
            "final_train_accuracy": statistics.fmean(r["train_accuracy"] for r in last)}


def inference_seconds(run: Path) -> dict[str, float]:
    """The GHN's size and its forward pass alone (features included) on two networks."""
    import torch

    from nas_service.ghn.checkpoint import load_ghn
    from nas_service.graph import from_module
    from nas_service.zoo import darts_like, resnet50

    torch.set_num_threads(2)
    ghn = load_ghn(run / "ghn.safetensors", "cpu")
    out: dict[str, float] = {"ghn_parameters": sum(p.numel() for p in ghn.parameters())}
    for name, module in (("resnet50", resnet50(num_classes=10)),
                         ("darts20", darts_like(cells=20, C=36))):
        graph = from_module(module, (3, 32, 32))

        def predict(graph=graph) -> None:
            ghn._features._items.clear()  # featurisation counts, as in ghn_bench
            with torch.no_grad():
                ghn.predict([graph])

        out[f"{name}_ghn_forward_s"] = median_seconds(predict, 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per training run (default 1: a run beside other work)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "propagation-ablation")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    record: dict[str, Any] = {"benchmark": "propagation_ablation", **machine_info(),
                              "steps": args.steps, "seed": args.seed,
                              "training_threads": args.threads,
                              "variants": {v: " ".join(flags) for v, flags in VARIANTS.items()}}
    results = {}
    for variant in VARIANTS:
        run = train(variant, args)
        results[variant] = {**training_record(run), **inference_seconds(run)}
        print(variant, json.dumps(results[variant]), flush=True)
    record["results"] = results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {relative(args.out)}")


if __name__ == "__main__":
    main()
