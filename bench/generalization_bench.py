"""Generalisation of a GHN beyond its training distribution (``docs/evaluation.md``).

    python bench/generalization_bench.py --truth-only      # train the ground truth (resumable)
    python bench/generalization_bench.py [--ghn FILE]      # score every set, write the results
    python bench/generalization_bench.py --resummarize     # the results again, with the ground
                                                           # truth trained since (scores kept)

Sets: in-distribution seeds of the families the GHN was trained on, families held out of its
training, ordinary hand-written CNNs, and the reference zoo (no ground truth: too large to
train here). Results: ``bench/results/generalization_bench.json`` (a summary per set and every
architecture's scores); the ground truth is cached in
``bench/results/generalization/ground-truth.json``, and the ranking head fit on the
in-distribution set, with its Kendall tau measured out of distribution, is written beside it as
``ranking-head.json`` (a head a GHN can ship, once the in-distribution set has its ground
truth).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_service.data import load_task  # noqa: E402
from nas_service.ghn.checkpoint import (  # noqa: E402
    bundled_checkpoint_path,
    load_ghn,
    read_metadata,
)
from nas_service.runtime import retain_freed_memory  # noqa: E402
from nas_service.scoring.protocol import SCORE_NAME  # noqa: E402
from nas_service.scoring.ranking_head import RankingHead, head_for_checkpoint  # noqa: E402
from nas_service.training.generalization import (  # noqa: E402
    architecture_sets,
    evaluate_generalization,
    rows_by_set,
    summarize_generalization,
    train_ground_truth_sets,
)
from nas_service.training.ranking import GroundTruthCache  # noqa: E402

CACHE = ROOT / "bench" / "results" / "generalization" / "ground-truth.json"
OUT = ROOT / "bench" / "results" / "generalization_bench.json"


def ghn_sha256(path: str | None) -> str:
    """The SHA-256 of the checkpoint scored: which GHN the results belong to."""
    return hashlib.sha256(Path(path or bundled_checkpoint_path()).read_bytes()).hexdigest()


def ghn_trained_on(path: str | None) -> list[str] | None:
    """The search spaces the checkpoint was trained on, as its metadata records them: a set is
    in distribution only for a GHN trained on its families."""
    training = read_metadata(path or bundled_checkpoint_path()).get("training")
    return None if not isinstance(training, dict) else training.get("config", {}).get("spaces")


def served_head(path: str | None, sha256: str) -> RankingHead | None:
    """The ranking head served beside the checkpoint (``sha256``: its :func:`ghn_sha256`; a
    head fit on another checkpoint's scores is not its head), if any: what searches rank by."""
    return head_for_checkpoint(path or bundled_checkpoint_path(), sha256, SCORE_NAME)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ghn", default=None, help="GHN checkpoint (default: the bundled one)")
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--truth-only", action="store_true",
                        help="only train the ground truth and the SGD baseline into the cache")
    parser.add_argument("--resummarize", action="store_true",
                        help="bring --out up to date with the ground truth the cache holds now, "
                             "without scoring anything again")
    parser.add_argument("--per-set", type=int, default=30,
                        help="sampled architectures per sampled set (default: 30)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--sets", default=None,
                        help="with --truth-only: the sets to train, comma-separated, in this "
                             "order (default: every set but reference, smallest network first)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    task = load_task(args.task)
    sets = architecture_sets(task.spec.input_shape, task.spec.num_classes, args.per_set)
    cache = GroundTruthCache(args.cache)
    if args.truth_only:
        order = args.sets.split(",") if args.sets else [None]
        unknown = [name for name in order if name is not None and name not in sets]
        if unknown:
            parser.error(f"--sets: unknown set(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(sets)}")
        for name in order:  # each named set whole before the next
            train_ground_truth_sets(sets if name is None else {name: sets[name]}, task, cache,
                                    device="cpu")
        return 0
    if args.resummarize:
        earlier = json.loads(args.out.read_text())
        result = summarize_generalization(rows_by_set(earlier["architectures"]), sets, task,
                                          cache, eval_images=earlier["protocol"]["eval_images"],
                                          served_head=served_head(args.ghn,
                                                                  ghn_sha256(args.ghn)),
                                          ghn_sha256=earlier.get("ghn_sha256"))
        result.update({k: earlier[k] for k in ("benchmark", "task", "ghn", "ghn_sha256",
                                               "ghn_trained_on", "torch", "threads",
                                               "timestamp", "seconds")
                       if k in earlier})
    else:
        ghn = load_ghn(args.ghn, "cpu")
        sha256 = ghn_sha256(args.ghn)
        started = time.time()
        result = evaluate_generalization(ghn, task, sets, cache, eval_images=args.eval_images,
                                         served_head=served_head(args.ghn, sha256),
                                         ghn_sha256=sha256)
        result.update({"benchmark": "generalization", "task": task.spec.name,
                       "ghn": args.ghn or "bundled", "ghn_sha256": sha256,
                       "ghn_trained_on": ghn_trained_on(args.ghn),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "seconds": time.time() - started})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    head = result["protocol"]["ranking_head"]
    if head is not None:  # fit in distribution, its tau measured out of distribution
        (args.cache.parent / "ranking-head.json").write_text(json.dumps(head, indent=2) + "\n")
    for name, summary in result["sets"].items():
        mean = summary["mean"]
        line = [f"{name:18s} n={summary['architectures']:2d}"]
        for key in ("predicted_recalibrated", "predicted_readout", "trained_accuracy"):
            if mean.get(key) is not None:
                line.append(f"{key} {mean[key]:.3f}")
        taus = {k: v["kendall_tau"] for k, v in summary["ranking"].items()}
        line.append("tau " + " ".join(f"{k}={v:.2f}" for k, v in taus.items() if v is not None))
        print("  ".join(line))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
