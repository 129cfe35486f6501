"""Coverage benchmark of ``from_module`` on real models, and what converting one costs.

Models: the fixtures of ``tests/real_models.py`` (common families written in their libraries'
style, ``torch.nn``'s transformer and recurrent layers, and ``transformers`` vision models built
from small configs, never downloaded), each at 1x28x28 and 3x32x32 with 10 classes. A model that
does not run at a size is listed but not counted. For each: converted or not, exact (no opaque
node) or with how many opaque nodes, by ``torch.fx`` or by a recorded run, the conversion time,
whether the bundled GHN predicts every parameter, and the error of a failure (times of a second
conversion: the first pays the process's one-off costs). For the 1x28x28 models, the service's
score: Fashion-MNIST validation accuracy with the bundled GHN's predicted parameters (first 1,000
images; batch norm recalibrated and the classifier refitted, as ``surrogate_accuracy`` does), an
out-of-distribution test of the GHN (none of these models is of its training spaces). For
comparison,
whether ``torch.export`` captures the model (the alternative to a recorded run) and how long it
takes.

Then ResNet-50 (``nas_service.zoo``, 3x32x32): ``from_module`` by fx and by a recorded run,
median of ``--repeats`` after a warm-up, on ``--threads`` threads.

Run from the repository root (needs the ``dev`` extra for ``transformers``)::

    python bench/real_models_bench.py      # writes bench/results/real_models_bench.json
    python bench/real_models_bench.py --accuracy-only   # only the predicted accuracies again
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from real_models import all_models  # noqa: E402
from support.processes import median_wall_and_cpu  # noqa: E402

from nas_service.ghn.checkpoint import load_ghn  # noqa: E402
from nas_service.graph.tracing import UnsupportedModuleError, from_module  # noqa: E402
from nas_service.scoring.surrogate import surrogate_accuracy  # noqa: E402
from nas_service.zoo import resnet50  # noqa: E402

SHAPES = ((1, 28, 28), (3, 32, 32))


def _convert(model: torch.nn.Module, shape: tuple[int, ...], ghn: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        graph = from_module(model, shape)
    except (UnsupportedModuleError, ValueError) as e:
        row.update(converted=False, error=f"{type(e).__name__}: {e}"[:2000])
        return row
    # Timed on a second conversion: the first pays one-off costs of the process (lazy imports,
    # kernels initialised on first use) that belong to no model.
    start = time.perf_counter()
    from_module(model, shape)
    row["convert_s"] = round(time.perf_counter() - start, 4)
    try:
        from_module(model, shape, trace="symbolic")
        row["trace"] = "fx"
    except (UnsupportedModuleError, ValueError):
        row["trace"] = "run"
    opaque = graph.opaque_nodes
    params = ghn.predict([graph])[0]
    row.update(converted=True, exact=not opaque, opaque_nodes=len(opaque), nodes=len(graph),
               parameters=graph.num_parameters,
               module_parameters=sum(p.numel() for p in model.parameters()),
               ghn_predicts_all=params.keys() == graph.parameter_shapes().keys(),
               opaque_labels=[n.attrs.label[:200] for n in opaque[:5]])  # type: ignore
    return row


def _accuracy(model: torch.nn.Module, ghn: Any) -> dict[str, Any]:
    """The service's score of the model: Fashion-MNIST validation accuracy with predicted
    parameters (batch norm recalibrated, classifier refitted), on the first 1,000 images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"predicted_accuracy": round(surrogate_accuracy(model, ghn=ghn), 4)}
    except Exception as e:  # a model the surrogate cannot score: say why, go on
        return {"predicted_accuracy": None, "accuracy_error": f"{type(e).__name__}: {e}"[:300]}


def _export(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.export(model, (x,), strict=False)
    except Exception as e:  # export raises many types; the point is whether it captures
        return {"export_ok": False, "export_error": f"{type(e).__name__}: {e}"[:300]}
    return {"export_ok": True, "export_s": round(time.perf_counter() - start, 4)}


def coverage(export: bool, accuracy: bool) -> list[dict[str, Any]]:
    ghn = load_ghn(device="cpu")
    rows = []
    for name, (library, make) in all_models().items():
        for shape in SHAPES:
            row: dict[str, Any] = {"model": name, "library": library,
                                   "input_shape": list(shape)}
            torch.manual_seed(0)
            try:
                model = make(shape[0], shape[1], 10).eval()
                x = torch.randn(2, *shape)
                with torch.no_grad():
                    model(x)
            except Exception as e:  # the model itself does not run at this size
                row.update(runs=False, error=f"{type(e).__name__}: {e}"[:300])
                rows.append(row)
                continue
            row["runs"] = True
            row.update(_convert(model, shape, ghn))
            if export:
                row.update(_export(model, x))
            if accuracy and shape == (1, 28, 28) and row["converted"]:
                row.update(_accuracy(model, ghn))
            rows.append(row)
            print(f"{name:34s} {shape[1]}px  "
                  + ("FAILED" if not row["converted"] else
                     f"{'exact' if row['exact'] else str(row['opaque_nodes']) + ' opaque':9s} "
                     f"{row['trace']:3s} {row['convert_s'] * 1e3:7.1f} ms"), flush=True)
    return rows


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean predicted accuracy of the 28 px models, over all and per library."""
    scored = [r for r in rows if r.get("predicted_accuracy") is not None]
    by_library: dict[str, list[float]] = {}
    for r in scored:
        by_library.setdefault(r["library"], []).append(r["predicted_accuracy"])
    return {"models": len(scored),
            "mean": round(statistics.fmean(r["predicted_accuracy"] for r in scored), 4)
            if scored else None,
            "at_chance": sum(r["predicted_accuracy"] < 0.15 for r in scored),
            "by_library": {k: {"models": len(v), "mean": round(statistics.fmean(v), 4)}
                           for k, v in sorted(by_library.items())}}


def rescore_accuracy(output: Path) -> dict[str, Any]:
    """The predicted accuracies of an existing results file measured again (with the GHN and
    score of this checkout), leaving its conversion timings as they were measured."""
    report = json.loads(output.read_text())
    ghn = load_ghn(device="cpu")
    models = all_models()
    for row in report["models"]:
        if row.get("input_shape") != [1, 28, 28] or not row.get("converted"):
            continue
        torch.manual_seed(0)
        model = models[row["model"]][1](1, 28, 10).eval()
        row.pop("accuracy_error", None)
        row.update(_accuracy(model, ghn))
        print(f"{row['model']:34s} {row['predicted_accuracy']}", flush=True)
    report["predicted_accuracy"] = accuracy_summary(report["models"])
    report["accuracy_timestamp"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def resnet50_timings(repeats: int) -> dict[str, Any]:
    model = resnet50().eval()
    shape = (3, 32, 32)
    out: dict[str, Any] = {}
    for name, trace in (("fx", "symbolic"), ("recorded_run", "run")):
        wall, cpu = median_wall_and_cpu(lambda t=trace: from_module(model, shape, trace=t), repeats)
        out[name], out[f"{name}_cpu"] = round(wall, 4), round(cpu, 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-export", action="store_true", help="skip torch.export")
    parser.add_argument("--resnet50-only", action="store_true",
                        help="only time ResNet-50 again, into the existing results file")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only measure the predicted accuracies again, into the existing "
                             "results file")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="skip the predicted accuracy on Fashion-MNIST (28 px models)")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench/results/real_models_bench.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.accuracy_only:
        print("predicted accuracy:", rescore_accuracy(args.output)["predicted_accuracy"])
        return
    if args.resnet50_only:
        report = json.loads(args.output.read_text())
        report["resnet50_from_module_s"].update(resnet50_timings(args.repeats), repeats=args.repeats)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print("ResNet-50 from_module:", report["resnet50_from_module_s"])
        return
    rows = coverage(not args.no_export, not args.no_accuracy)
    counted = [r for r in rows if r["runs"]]
    converted = [r for r in counted if r["converted"]]
    summary = {
        "models_run": len(counted),
        "converted": len(converted),
        "converted_fraction": round(len(converted) / len(counted), 4),
        "exact": sum(r["exact"] for r in converted),
        "with_opaque_nodes": sum(not r["exact"] for r in converted),
        "by_fx": sum(r["trace"] == "fx" for r in converted),
        "by_recorded_run": sum(r["trace"] == "run" for r in converted),
        "ghn_predicts_all": sum(r["ghn_predicts_all"] for r in converted),
        "median_convert_s": round(statistics.median(r["convert_s"] for r in converted), 4),
    }
    if not args.no_export:
        exported = [r for r in counted if r["export_ok"]]
        summary.update(torch_export_captured=len(exported),
                       median_export_s=round(statistics.median(r["export_s"] for r in exported),
                                             4) if exported else None)
    resnet = resnet50_timings(args.repeats)
    report = {
        "benchmark": "real_models",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "summary": summary,
        "resnet50_from_module_s": {**resnet, "input_shape": [3, 32, 32],
                                   "statistic": "median", "repeats": args.repeats},
        "models": rows,
    }
    if not args.no_accuracy:
        report["predicted_accuracy"] = accuracy_summary(rows)
    print(json.dumps(summary, indent=2))
    print("ResNet-50 from_module:", report["resnet50_from_module_s"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
