"""GHN speed: end to end from ``nn.Module`` to predicted weights, 2 CPU threads, batch of one.

Cases (each in a fresh subprocess so that its peak memory is its own):

* ``resnet50`` — ResNet-50 with a CIFAR stem at 3x32x32 (GHN-2 here: 0.21 s end to end),
* ``darts20`` — a 20-cell DARTS network, C=36, at 3x32x32 (GHN-2 here: 2.22 s),
* ``batch32`` — 32 architectures of the ``cells`` space (1x28x28) predicted in one batch.

Times are medians of 7 runs after one warm-up; the feature cache is cleared before every run so
featurisation is counted. Each case runs as every ``nas-service`` command does, with
``nas_service.runtime.retain_freed_memory()``, and once more with glibc's default allocator
settings (``*_default_allocator`` fields): writing predicted weights into fresh pages is most of
a ResNet-50's prediction otherwise. Writes ``bench/results/ghn_bench.json``.

    python bench/ghn_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from support.processes import median_seconds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPEATS = 7
GHN2_SECONDS = {"resnet50": 0.21, "darts20": 2.22}


def _load_ghn():
    from nas_service.ghn.checkpoint import bundled_checkpoint_path, load_ghn

    path = bundled_checkpoint_path()
    if path.is_file():
        return load_ghn(path, "cpu"), "bundled"
    from nas_service.ghn import GraphHyperNetwork

    return GraphHyperNetwork().eval(), "untrained (no bundled checkpoint)"


def run_case(case: str) -> dict:
    import torch

    torch.set_num_threads(2)
    from nas_service.graph import from_module
    from nas_service.runtime import retain_freed_memory

    retained = retain_freed_memory()  # off when run with NAS_RETAIN_FREED_MEMORY=0
    from nas_service.zoo import darts_like, resnet50

    ghn, which = _load_ghn()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def predict(graphs):
        ghn._features._items.clear()
        with torch.no_grad():
            return ghn.predict(graphs)

    if case in ("resnet50", "darts20"):
        module = resnet50(num_classes=10) if case == "resnet50" else darts_like(cells=20, C=36)
        graph = from_module(module, (3, 32, 32))
        result = {
            "nodes": len(graph.nodes),
            "parameters": graph.num_parameters,
            "graph_build_s": median_seconds(lambda: from_module(module, (3, 32, 32)), REPEATS),
            "ghn_forward_s": median_seconds(lambda: predict([graph]), REPEATS),
            "end_to_end_s": median_seconds(
                lambda: predict([from_module(module, (3, 32, 32))]), REPEATS),
            "ghn2_end_to_end_s": GHN2_SECONDS[case],
        }
        result["speedup_vs_ghn2"] = round(GHN2_SECONDS[case] / result["end_to_end_s"], 2)
    elif case == "batch32":
        from nas_service.spaces import get_space

        space = get_space("cells")
        graphs = [space.sample(s, input_shape=(1, 28, 28), num_classes=10) for s in range(32)]
        seconds = median_seconds(lambda: predict(graphs), REPEATS)
        result = {"graphs": 32, "nodes_total": sum(len(g.nodes) for g in graphs),
                  "parameters_total": sum(g.num_parameters for g in graphs),
                  "seconds": seconds, "graphs_per_second": 32 / seconds}
    else:
        raise SystemExit(f"unknown case {case!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result.update(ghn=which, retain_freed_memory=retained, peak_rss_mb=round(peak / 1024, 1),
                  peak_rss_increase_mb=round((peak - base_rss) / 1024, 1))
    return result


CASES = ("resnet50", "darts20", "batch32")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, default=None,
                        help="run one case in this process and print its JSON (used internally: "
                             "without it, every case runs in a fresh subprocess)")
    args = parser.parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(args.case)))
        return
    import torch

    def run(case: str, retain: bool) -> dict:
        env = {**os.environ, "NAS_RETAIN_FREED_MEMORY": "1" if retain else "0"}
        out = subprocess.run([sys.executable, __file__, "--case", case], check=True,
                             capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {}
    for case in CASES:
        results[case] = run(case, retain=True)
        default = run(case, retain=False)
        for key in ("end_to_end_s", "ghn_forward_s", "seconds", "graphs_per_second",
                    "peak_rss_mb"):
            if key in default:
                results[case][f"{key.removesuffix('_s')}_default_allocator"
                              + ("_s" if key.endswith("_s") else "")] = default[key]
        print(case, json.dumps(results[case]))
    record = {"benchmark": "ghn", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "torch": torch.__version__, "python": platform.python_version(), "threads": 2,
              "repeats": REPEATS, "statistic": "median", "cases": results}
    out_path = ROOT / "bench" / "results" / "ghn_bench.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
