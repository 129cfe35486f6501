"""The character-task GHN on held-out language models: predicted parameters vs random
initialisation, and how well its score ranks trained models.

Held-out architectures are ``charlm`` samples (input ``[64]``, the 90 symbols of
``gcide-chars``, at most ``--max-parameters``) with seeds ``--first-seed ..`` (training used
seeds from 1,000,000 on and validated on 0..7, so none of these was seen). For each:

* ``ghn_bpc``: validation bits per character (the service's score:
  ``nas_service.scoring.language``, the task's 128 windows of 64 characters, zero states) with
  the GHN's predicted parameters;
* ``random_bpc``: the same with PyTorch's default initialisation (``to_module``, seed 0).

For the first ``--trained`` of them, a model is trained from its random initialisation with
Adam (``--train-steps`` steps, batches of 16 random windows of the training split) and its
validation bpc measured the same way (``trained_bpc``). Kendall tau of the GHN's score against
trained bpc is reported beside the parameter count's (more parameters predicted to be better),
both oriented so that +1 is a perfect ranking.

    python bench/charlm_ghn_bench.py      # writes bench/results/charlm_ghn_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_service.data import get_task  # noqa: E402
from nas_service.data.characters import load_char_task  # noqa: E402
from nas_service.ghn.checkpoint import load_ghn, read_metadata  # noqa: E402
from nas_service.graph import to_module  # noqa: E402
from nas_service.scoring.language import (  # noqa: E402
    bits_per_character,
    next_token_loss,
    predicted_bpc,
    training_windows,
    validation_windows,
)
from nas_service.scoring.metrics import kendall_tau  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

DEFAULT_GHN = ROOT / "nas_service" / "assets" / "ghn-gcide-chars.safetensors"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ghn", default=str(DEFAULT_GHN))
    p.add_argument("--held-out", type=int, default=24, help="held-out architectures")
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--trained", type=int, default=10, help="of them, trained briefly")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--max-parameters", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "charlm_ghn_bench.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    spec = get_task("gcide-chars")
    steps, vocab = spec.input_shape[0], spec.num_classes
    corpus = load_char_task(spec)
    val_x, val_y = validation_windows(corpus.val, steps, spec.val_size)
    ghn = load_ghn(args.ghn, "cpu").eval()
    space = get_space("charlm")
    seeds = list(range(args.first_seed, args.first_seed + args.held_out))
    graphs = [space.sample(s, (steps,), vocab, max_parameters=args.max_parameters)
              for s in seeds]

    started = time.perf_counter()
    ghn_bpc = predicted_bpc(ghn, graphs, val_x, val_y)
    ghn_seconds = time.perf_counter() - started
    rows = []
    for seed, graph, predicted in zip(seeds, graphs, ghn_bpc, strict=True):
        torch.manual_seed(0)
        random_bpc = bits_per_character(to_module(graph), val_x, val_y)
        cell = next(n.op if n.op != "recurrent" else n.attrs.mode for n in graph.nodes
                    if n.op in ("recurrent", "rhn", "hyper_lstm", "hyper_rhn"))
        rows.append({"seed": seed, "cell": cell, "parameters": graph.num_parameters,
                     "ghn_bpc": predicted, "random_bpc": random_bpc})
        print(f"seed {seed} {cell:<10} {graph.num_parameters:>7} params  ghn {predicted:.3f}  "
              f"random {random_bpc:.3f}", flush=True)

    generator = torch.Generator().manual_seed(0)
    for row, graph in zip(rows[:args.trained], graphs[:args.trained], strict=True):
        torch.manual_seed(0)
        net = to_module(graph).train()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            x, y = training_windows(corpus.train, steps, 16, generator)
            loss = next_token_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
        row["trained_bpc"] = bits_per_character(net, val_x, val_y)
        row["train_seconds"] = time.perf_counter() - t0
        print(f"seed {row['seed']} trained {row['trained_bpc']:.3f} "
              f"({row['train_seconds']:.0f} s)", flush=True)

    trained = [r for r in rows if "trained_bpc" in r]
    truth = [r["trained_bpc"] for r in trained]
    finite = [r for r in rows if math.isfinite(r["ghn_bpc"]) and math.isfinite(r["random_bpc"])]
    meta = read_metadata(args.ghn)
    result = {
        "command": "python bench/charlm_ghn_bench.py",
        "ghn": {"path": os.path.relpath(args.ghn, ROOT), "bytes": Path(args.ghn).stat().st_size,
                "parameters": sum(p.numel() for p in ghn.parameters()),
                "training": json.loads(meta["training"]) if isinstance(meta.get("training"), str)
                else meta.get("training")},
        "task": spec.name, "validation_windows": len(val_y), "window": steps,
        "held_out_seeds": [seeds[0], seeds[-1]], "max_parameters": args.max_parameters,
        "uniform_bpc": math.log2(vocab),
        "mean_ghn_bpc": statistics.fmean(r["ghn_bpc"] for r in finite),
        "mean_random_bpc": statistics.fmean(r["random_bpc"] for r in finite),
        "ghn_better_than_random": sum(r["ghn_bpc"] < r["random_bpc"] for r in rows),
        "architectures": len(rows),
        "ghn_seconds_per_architecture": ghn_seconds / len(rows),
        "trained": {"count": len(trained), "steps": args.train_steps, "batch": 16,
                    "optimizer": "Adam lr 2e-3, gradient norm clipped at 5",
                    "mean_trained_bpc": statistics.fmean(truth) if truth else None,
                    "kendall_tau_ghn": kendall_tau([-r["ghn_bpc"] for r in trained],
                                                   [-t for t in truth]) if trained else None,
                    "kendall_tau_parameters": kendall_tau([r["parameters"] for r in trained],
                                                          [-t for t in truth])
                    if trained else None},
        "rows": rows,
        "threads": args.threads,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
