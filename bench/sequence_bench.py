"""LSTM vs RHN vs HyperLSTM vs hyper-RHN: character-level language modelling at equal parameters.

For each parameter budget (``--sizes``) and each kind (``--kinds``), the widest model of that
kind within the budget (``hidden_size_for_parameters``; embedding 64, one layer, RHN depth
``--depth``, hypernetwork width ``--hyper-size``) is trained on the GCIDE corpus
(``nas_service.data.characters``, or ``--corpus FILE``) with truncated BPTT (Adam, the same
number of steps, batch and window for every kind, so every model sees the same characters),
then measured:

* ``val_bpc`` / ``test_bpc``: bits per character on the first ``--eval-chars`` characters of
  the validation and test splits;
* ``train_tokens_per_s``: training throughput (CPU, ``--threads`` threads);
* ``gradient_flow``: :math:`\\lVert \\partial L_T / \\partial h_{T-k} \\rVert` for
  ``k = 1 .. --flow-length - 1`` (``sequence.gradient_flow``): the loss of the last step against
  the top layer's hidden state ``k`` steps earlier, averaged over ``--flow-batches`` validation
  windows, for the trained model (``gradient_flow``) and at initialisation
  (``gradient_flow_init``); ``flow_retained`` is the norm ``length - 1`` steps back over the norm
  1 step back: how much of the gradient reaches that far.

Results are written after every model (``--out``, default
``bench/results/sequence_bench.json``), so a run that is stopped keeps what it measured.
``--quick`` is a smoke run (a tiny budget and few steps; writes to a temporary file unless
``--out`` is given).

    python bench/sequence_bench.py                 # ~0.25 M and ~1 M parameters, one after the other
    python bench/sequence_bench.py --quick

The measured results (docs/sequence.md) ran the two sizes as two processes at once, then
combined their files into ``bench/results/sequence_bench.json``:

    python bench/sequence_bench.py --sizes 250000 --steps 250 --max-seconds 1200 \
        --eval-chars 50000 --out bench/results/sequence_bench_250k.json
    python bench/sequence_bench.py --sizes 1000000 --steps 100 --max-seconds 1200 \
        --eval-chars 50000 --out bench/results/sequence_bench_1m.json
    python bench/sequence_bench.py --combine bench/results/sequence_bench_250k.json \
        bench/results/sequence_bench_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "bench" / "results" / "sequence_bench.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="250000,1000000", help="parameter budgets")
    p.add_argument("--kinds", default="lstm,rhn,hyper-lstm,hyper-rhn")
    p.add_argument("--steps", default="250,100",
                   help="training steps per size (one value or one per size)")
    p.add_argument("--max-seconds", type=float, default=1200.0,
                   help="wall-clock cap of one model's training (recorded when it stops it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bptt", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--hyper-size", type=int, default=64)
    p.add_argument("--eval-chars", type=int, default=50_000)
    p.add_argument("--flow-length", type=int, default=100)
    p.add_argument("--flow-batches", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None, help="a text file instead of GCIDE")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, few steps")
    p.add_argument("--out", default=None)
    p.add_argument("--combine", nargs="+", default=None, metavar="FILE",
                   help="no training: combine the results of runs made in parallel (e.g. one "
                        "per size) into --out")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.eval_chars, args.hyper_size = "30000", "5", 2_000, 16
        args.flow_length, args.flow_batches, args.bptt, args.batch_size = 20, 1, 20, 8
    return args


def ordering(rows: list[dict]) -> dict:
    """Per size: the kinds by test bpc, and whether hyper-RHN <= RHN <= LSTM holds."""
    out = {}
    for size in sorted({r["target_parameters"] for r in rows}):
        by_kind = {r["kind"]: r["test_bpc"] for r in rows if r["target_parameters"] == size}
        entry: dict[str, object] = {"by_test_bpc": sorted(by_kind, key=by_kind.__getitem__)}
        if {"lstm", "rhn", "hyper-rhn"} <= by_kind.keys():
            entry["hyper_rhn_le_rhn_le_lstm"] = (
                by_kind["hyper-rhn"] <= by_kind["rhn"] <= by_kind["lstm"])
        out[str(size)] = entry
    return out


def combine(files: list[str], out: Path) -> None:
    parts = [json.loads(Path(f).read_text()) for f in files]
    report = {"parts": [{k: v for k, v in p.items() if k != "results"} for p in parts],
              "results": [r for p in parts for r in p["results"]]}
    report["ordering"] = ordering(report["results"])
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["ordering"], indent=1))
    print(f"written to {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        combine(args.combine, Path(args.out) if args.out else DEFAULT_OUT)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from nas_service.data.characters import load_char_corpus
    from nas_service.sequence import (
        CharLanguageModel,
        CharModelConfig,
        batch_streams,
        count_parameters,
        evaluate_bpc,
        gradient_flow,
        hidden_size_for_parameters,
        train_steps,
    )

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "sequence_bench.quick.json" if args.quick else DEFAULT_OUT)
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    steps = steps * len(sizes) if len(steps) == 1 else steps
    if len(steps) != len(sizes):
        raise SystemExit("--steps needs one value or one per size")
    kinds = args.kinds.split(",")

    t0 = time.perf_counter()
    corpus = load_char_corpus(args.corpus)
    load_s = time.perf_counter() - t0
    train = batch_streams(corpus.train, args.batch_size)
    flow_streams = batch_streams(corpus.val[:args.eval_chars], 16)
    report: dict = {
        "command": "python bench/sequence_bench.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads,
                    "load_average_at_start": os.getloadavg()},
        "corpus": {**corpus.describe(), "load_seconds": round(load_s, 1)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "results": [],
    }

    def write() -> None:
        report["ordering"] = ordering(report["results"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)

    for size, n_steps in zip(sizes, steps, strict=True):
        for kind in kinds:
            base = CharModelConfig(kind, vocab_size=corpus.vocab_size, hidden_size=1,
                                   depth=args.depth, hyper_size=args.hyper_size)
            cfg = hidden_size_for_parameters(base, size)
            torch.manual_seed(args.seed)
            model = CharLanguageModel(cfg)
            flow_init = gradient_flow(model, flow_streams, length=args.flow_length,
                                      batches=args.flow_batches)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
            print(f"[{size}] {kind}: hidden {cfg.hidden_size}, "
                  f"{count_parameters(model)} parameters, {n_steps} steps", flush=True)
            stats = train_steps(model, train, bptt=args.bptt, optimizer=optimizer,
                                max_steps=n_steps, max_seconds=args.max_seconds)
            t1 = time.perf_counter()
            val = evaluate_bpc(model, corpus.val, bptt=args.bptt, batch_size=args.batch_size,
                               max_tokens=args.eval_chars)
            test = evaluate_bpc(model, corpus.test, bptt=args.bptt,
                                batch_size=args.batch_size, max_tokens=args.eval_chars)
            eval_s = time.perf_counter() - t1
            flow = gradient_flow(model, flow_streams, length=args.flow_length,
                                 batches=args.flow_batches)
            row = {
                "kind": kind, "target_parameters": size, "parameters": count_parameters(model),
                "config": cfg.to_dict(), "steps": stats.steps, "steps_requested": n_steps,
                "stopped_by_wall_clock": stats.steps < n_steps,
                "train_characters": stats.tokens, "train_seconds": round(stats.seconds, 1),
                "train_tokens_per_s": round(stats.tokens_per_second, 1),
                "eval_tokens_per_s": round(2 * args.eval_chars / eval_s, 1),
                "train_bpc_last_50_steps": round(stats.train_bpc, 4),
                "val_bpc": round(val, 4), "test_bpc": round(test, 4),
                "flow_retained": float(f"{flow[-1] / flow[0]:.4g}") if flow[0] > 0 else None,
                "flow_retained_init": float(f"{flow_init[-1] / flow_init[0]:.4g}")
                if flow_init[0] > 0 else None,
                "gradient_flow": [float(f"{v:.4g}") for v in flow],
                "gradient_flow_init": [float(f"{v:.4g}") for v in flow_init],
            }
            report["results"].append(row)
            write()
            print(f"  val {val:.3f} test {test:.3f} bpc, {stats.tokens_per_second:.0f} tok/s, "
                  f"{stats.seconds:.0f} s, gradient retained over {args.flow_length} steps "
                  f"{row['flow_retained']} (init {row['flow_retained_init']})", flush=True)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    write()
    print(json.dumps(report["ordering"], indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
