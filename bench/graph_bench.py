"""Benchmark of the graph layer: ``from_module``, ``to_module`` and validation.

Networks: ResNet-50 and the 20-cell DARTS network (C=36), both on 3x32x32 inputs, from the
hand-written reference models in ``tests/zoo.py``. Each operation is timed ``--repeats`` times
(after one warm-up run) on ``--threads`` intra-op threads; the median wall-clock time is
reported, with the median CPU time of the process beside it (less sensitive to other load on a
shared machine). The reference is GHN-2's construction of the same graphs from autograd, as
measured on this hardware.

Run from the repository root::

    python bench/graph_bench.py            # writes bench/results/graph_bench.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from support.processes import median_wall_and_cpu  # noqa: E402

from nas_service.graph import ArchitectureGraph, to_module  # noqa: E402
from nas_service.graph.tracing import from_module  # noqa: E402
from nas_service.zoo import darts_like, resnet50  # noqa: E402

INPUT_SHAPE = (3, 32, 32)
# GHN-2 (Knyazev et al., 2021) builds its graph from the autograd graph of a forward pass.
GHN2_SECONDS = {"resnet50": 0.05, "darts20_c36": 0.33}
NETWORKS: dict[str, Callable[[], torch.nn.Module]] = {
    "resnet50": resnet50,
    "darts20_c36": lambda: darts_like(cells=20, C=36),
}


def run(repeats: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    for name, make in NETWORKS.items():
        model = make().eval()
        graph = from_module(model, INPUT_SHAPE)
        timings = {
            "from_module": median_wall_and_cpu(lambda m=model: from_module(m, INPUT_SHAPE),
                                               repeats),
            "to_module": median_wall_and_cpu(lambda g=graph: to_module(g), repeats),
            "validate": median_wall_and_cpu(
                lambda g=graph: ArchitectureGraph.from_dict(g.to_dict()), repeats),
        }
        results[name] = {
            "input_shape": list(INPUT_SHAPE),
            "nodes": len(graph),
            "parameters": graph.num_parameters,
            "module_parameters": sum(p.numel() for p in model.parameters()),
            "macs": graph.flops,
            **{f"{op}_s": round(w, 5) for op, (w, _) in timings.items()},
            **{f"{op}_cpu_s": round(c, 5) for op, (_, c) in timings.items()},
            "ghn2_graph_s": GHN2_SECONDS[name],
            "from_module_speedup_vs_ghn2": round(GHN2_SECONDS[name] / timings["from_module"][0], 2),
        }
    return {
        "benchmark": "graph",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
        "repeats": repeats,
        "statistic": "median",
        "networks": results,
    }


def _table(report: dict[str, Any]) -> str:
    rows = [("network", "nodes", "params", "from_module", "to_module", "validate", "GHN-2",
             "speedup")]
    for name, r in report["networks"].items():
        rows.append((name, str(r["nodes"]), f"{r['parameters']:,}",
                     f"{r['from_module_s'] * 1e3:.1f} ms", f"{r['to_module_s'] * 1e3:.1f} ms",
                     f"{r['validate_s'] * 1e3:.1f} ms", f"{r['ghn2_graph_s'] * 1e3:.0f} ms",
                     f"{r['from_module_speedup_vs_ghn2']:.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/graph_bench.json")
    args = parser.parse_args(argv)
    report = run(args.repeats, args.threads)
    print(f"torch {report['torch']}, {report['threads']} threads, median of "
          f"{report['repeats']} (wall clock)")
    print(_table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
