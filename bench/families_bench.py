"""Sizes and sampling speed of the ``families`` space, per family.

For each family, ``--samples`` seeds of the one-family view ``families[<family>]`` are sampled
at the GHN's training bounds (``--max-parameters``, ``--max-flops``, input ``--input-shape``).
Reported per family: the share of seeds that give an architecture (the others raise
``SearchSpaceError``: nothing of the family fits), the median parameters, MACs, nodes and depth
(conv2d, linear, patch_embed and self_attention nodes: the layers that hold weights), the median
of the widest map's channels, and the mean CPU time to sample one graph.

Run from the repository root::

    python bench/families_bench.py        # writes bench/results/families_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_service.graph import ArchitectureGraph  # noqa: E402
from nas_service.spaces import SearchSpaceError  # noqa: E402
from nas_service.spaces.families import FAMILIES, FamilySpace  # noqa: E402

WEIGHT_LAYERS = frozenset({"conv2d", "linear", "patch_embed", "self_attention"})


def depth(graph: ArchitectureGraph) -> int:
    return sum(n.op in WEIGHT_LAYERS for n in graph.nodes)


def widest(graph: ArchitectureGraph) -> int:
    return max(n.shape[0] for n in graph.nodes if len(n.shape) == 3 and n.op == "conv2d"
               ) if any(n.op == "conv2d" for n in graph.nodes) else max(
        n.shape[-1] for n in graph.nodes if n.op == "linear")


def run(samples: int, shape: tuple[int, int, int], max_parameters: int,
        max_flops: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for family in FAMILIES:
        space = FamilySpace([family])
        graphs, seconds = [], 0.0
        for seed in range(samples):
            start = time.process_time()
            with contextlib.suppress(SearchSpaceError):  # nothing of the family fits
                graphs.append(space.sample(seed, shape, 10, max_parameters=max_parameters,
                                           max_flops=max_flops))
            seconds += time.process_time() - start

        def median(values: list[int]) -> float:
            return statistics.median(values) if values else 0.0

        results[family] = {
            "success": len(graphs) / samples,
            "median_parameters": median([g.num_parameters for g in graphs]),
            "median_macs": median([g.flops for g in graphs]),
            "median_nodes": median([len(g.nodes) for g in graphs]),
            "median_depth": median([depth(g) for g in graphs]),
            "max_depth": max((depth(g) for g in graphs), default=0),
            "median_widest": median([widest(g) for g in graphs]),
            "ms_per_sample": 1000 * seconds / samples,
        }
        print(f"{family:18s} {results[family]['success']:6.1%} "
              f"{results[family]['median_parameters'] / 1e3:8.1f}k "
              f"{results[family]['median_macs'] / 1e6:7.2f}M "
              f"depth {results[family]['median_depth']:5.1f} "
              f"(max {results[family]['max_depth']:3d}) "
              f"widest {results[family]['median_widest']:6.1f} "
              f"{results[family]['ms_per_sample']:6.2f} ms", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--input-shape", default="1,28,28")
    parser.add_argument("--max-parameters", type=int, default=1_000_000)
    parser.add_argument("--max-flops", type=int, default=20_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/families_bench.json")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.input_shape.split(","))
    results = run(args.samples, shape, args.max_parameters, args.max_flops)  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "samples": args.samples, "input_shape": list(shape),
        "max_parameters": args.max_parameters, "max_flops": args.max_flops,
        "families": results,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
