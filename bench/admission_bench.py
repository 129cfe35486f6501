"""Admission control against what scoring really costs: for each graph, the service scorer's
own estimate (:mod:`nas_service.scoring.cost`) beside the peak memory and the time of scoring it
with the bundled GHN and the service's default protocol (1,000 validation images, 4 x 128
recalibration images, the bundled ranking head's gradient norm at initialisation on
``GRAD_NORM_IMAGES`` training images, CPU).

Each graph is scored in a fresh child process, so its peak resident set (``VmHWM``) is its own:
the child loads the GHN and the task data, reads ``VmHWM``, scores the graph with admission
control off, and reads it again. The difference is what the process grows by to score that
graph first (one-time costs such as oneDNN's set-up included, which is what a fresh worker
pays); ``macs_per_second`` is the graph's MACs over its scoring
time. The graphs: samples of the search spaces, and graphs built to be costly where the old
limits did not look (padding and adaptive pooling that grow the spatial size, attention over
many tokens, a dense layer of many parameters), at sizes this machine can afford.

Run from the repository root (a few minutes)::

    python bench/admission_bench.py            # writes bench/results/admission_bench.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _conv(i: str, src: str, out: int, k: int = 3, pad: int = 1) -> dict[str, Any]:
    return {"id": i, "op": "conv2d", "inputs": [src], "out_channels": out,
            "kernel_size": [k, k], "padding": [pad, pad]}


def _head(src: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    nodes += [{"id": "gap", "op": "global_avg_pool", "inputs": [src]},
              {"id": "fc", "op": "linear", "inputs": ["gap"], "out_features": 10},
              {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]
    return {"format": "nas-graph/1", "nodes": nodes}


def costly_graphs() -> dict[str, dict[str, Any]]:
    """Graphs whose cost is in their shapes, not in their parameter or MAC counts."""
    inp = {"id": "input", "op": "input", "shape": [1, 28, 28]}
    padded = _head("c", [inp, _conv("c", "input", 8, pad=100)])
    upsampled = _head("c", [inp, {"id": "up", "op": "adaptive_avg_pool", "inputs": ["input"],
                                  "output_size": [256, 256]}, _conv("c", "up", 8)])
    attention = _head("att", [inp, _conv("c", "input", 32),
                              {"id": "att", "op": "self_attention", "inputs": ["c"],
                               "num_heads": 2}])
    dense = {"format": "nas-graph/1", "nodes": [
        inp, {"id": "flat", "op": "flatten", "inputs": ["input"]},
        {"id": "fc1", "op": "linear", "inputs": ["flat"], "out_features": 8192},
        {"id": "fc2", "op": "linear", "inputs": ["fc1"], "out_features": 1024},
        {"id": "fc", "op": "linear", "inputs": ["fc2"], "out_features": 10},
        {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]}
    wide = _head("c3", [inp, _conv("c1", "input", 128), _conv("c2", "c1", 256),
                        _conv("c3", "c2", 128)])
    return {"padding-100": padded, "adaptive-pool-256": upsampled, "attention-784-tokens":
            attention, "dense-15M": dense, "wide-conv-28x28": wide}


def space_graphs() -> dict[str, dict[str, Any]]:
    from nas_service.spaces import get_space

    out = {}
    for space, seeds in (("cells", (0, 1, 2)), ("macro", (0, 1)), ("families", (0, 3, 5))):
        for seed in seeds:
            out[f"{space}-{seed}"] = get_space(space).sample(seed, (1, 28, 28), 10).to_dict()
    return out


def measure_one(doc: dict[str, Any]) -> dict[str, Any]:
    """In the child: score ``doc`` with admission off; peak memory and time."""
    import torch

    from nas_service.graph import ArchitectureGraph
    from nas_service.scoring import ArchitectureScorer
    from nas_service.scoring.cost import ScoringBudget

    torch.set_num_threads(2)
    unlimited = ScoringBudget(max_bytes=2**62, max_macs=2**62)
    scorer = ArchitectureScorer.load(device="cpu", eval_images=1000, budget=unlimited)
    graph = ArchitectureGraph.from_dict(doc)
    cost = scorer.cost(graph, scorer.task_tensors("fashion-mnist"))  # what the service estimates
    before = _hwm()
    started = time.perf_counter()
    (result,) = scorer.score([graph], "fashion-mnist")
    seconds = time.perf_counter() - started
    return {"peak_bytes": _hwm() - before, "seconds": seconds,
            "estimated_peak_bytes": cost.peak_bytes, "estimated_macs": cost.macs,
            "error": None if not isinstance(result, Exception) else repr(result)[:300]}


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/admission_bench.json")
    parser.add_argument("--only", nargs="*", default=None, metavar="GRAPH",
                        help="measure only these graphs (names as printed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return 0
    from nas_service.graph import ArchitectureGraph
    from nas_service.scoring.trainability import GRAD_NORM_IMAGES

    rows = []
    for name, doc in {**space_graphs(), **costly_graphs()}.items():
        if args.only and name not in args.only:
            continue
        graph = ArchitectureGraph.from_dict(doc)
        child = subprocess.run([sys.executable, __file__, "--one", json.dumps(doc)],
                               capture_output=True, text=True, cwd=ROOT, check=True)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        row = {"graph": name, "parameters": graph.num_parameters, "macs_per_image": graph.flops,
               "estimated_peak_bytes": measured["estimated_peak_bytes"],
               "estimated_macs": measured["estimated_macs"],
               "measured_peak_bytes": measured["peak_bytes"], "seconds": measured["seconds"],
               "estimate_over_measured": round(measured["estimated_peak_bytes"]
                                               / max(measured["peak_bytes"], 1), 2),
               "macs_per_second": measured["estimated_macs"] / measured["seconds"],
               "error": measured["error"]}
        rows.append(row)
        print(f"{name:24s} est {row['estimated_peak_bytes'] / 2**20:8.0f} MiB  measured "
              f"{measured['peak_bytes'] / 2**20:8.0f} MiB  {measured['seconds']:6.1f} s  "
              f"{row['macs_per_second'] / 1e9:6.1f} GMAC/s", flush=True)
    under = [r["graph"] for r in rows if r["estimated_peak_bytes"] < r["measured_peak_bytes"]]
    result = {"benchmark": "admission_bench", "protocol": {"eval_images": 1000,
              "eval_batch_size": 100, "recalibration": "4x128", "grad_norm_images": GRAD_NORM_IMAGES,
              "device": "cpu"},
              "graphs": rows, "underestimated": under,
              "min_macs_per_second": min(r["macs_per_second"] for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"underestimated: {under or 'none'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
