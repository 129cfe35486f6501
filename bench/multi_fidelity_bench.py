"""Multi-fidelity scoring on Fashion-MNIST: what each rung costs, how well it ranks, how many
candidates a worker scores per minute with rungs, and how soon a search finds a top-5 % network.

Four measurements, one process, torch on one thread (``--threads``):

1. **Rungs against trained accuracy.** The held-out architectures that have trained ground
   truth in ``bench/results/ranking-fashion-mnist/ground-truth.json`` (5 epochs of SGD, test
   split; seeds of ``cells`` and ``macro`` the bundled GHN never trained on) are scored by the
   bundled GHN at every fidelity of ``--rungs`` (validation images; recalibration scaled alike,
   :mod:`nas_service.scoring.fidelity`). Per fidelity: Kendall tau of the predicted accuracy
   and of the ranking value (the ranking head's estimate, what searches rank by; the head was
   fit on these same architectures, so its tau is in-sample) against the trained accuracy, and
   the seconds one score takes (GHN prediction and evaluation, measured per architecture).
2. **Throughput.** A real :class:`~nas_service.search.Worker` on SQLite runs one random search
   job on ``cells`` per configuration of ``CONFIGURATIONS`` (today's full score, and rungs),
   ``--candidates`` candidates each (the same architectures for every configuration: the same
   seed and indices); candidates per minute of the process's CPU time (what one worker on a core
   of its own scores: this machine's cores are shared with other work, which inflates wall-clock
   times unevenly) and per minute of wall-clock time.
3. **Search quality, simulated** on the ground-truth architectures with the costs measured in 1:
   random search drawing architectures from them (with replacement), scored (a) in full,
   (b) with each rung configuration (successive halving in brackets, only full scores become
   the incumbent), (c) by one epoch of SGD (its validation accuracy from the ground-truth file;
   its cost measured here on ``--sgd-images`` training images per architecture and scaled to
   the 55,000 of an epoch). The time until the incumbent (what the search returns if stopped
   then) is a top-5 % architecture by trained accuracy: median and mean over ``--runs``
   simulated searches, and the ratio to SGD's.
With ``--breakdown`` rungs, the CPU time of one score at each of them is broken down by step
(proposing, the GHN forward pass, building the network, recalibration and readout, evaluation,
copying the state, writing the checkpoint), on 16 of the throughput job's architectures.
``--reuse-rungs`` takes those rungs' per-architecture records from an earlier result
(``--reuse-from``) instead of scoring the 39 architectures again; three of them are scored again
and must reproduce their stored accuracy exactly, or the benchmark stops.

4. **Worker scaling model.** Seconds of database time per candidate (``record_candidate`` and
   ``promote_candidate`` on SQLite and, when it answers, PostgreSQL at ``--postgres-url``) and
   the worker's CPU seconds per candidate (from 2) give the speed-up of n workers, each on its
   own core, when the database serialises its share: ``min(n, (c + d) / d)``.

    python bench/multi_fidelity_bench.py            # 45 minutes on this 2-core CPU, under load
    python bench/multi_fidelity_bench.py --quick    # a few minutes, fewer of everything
    python bench/multi_fidelity_bench.py --rungs 100 250 --reuse-rungs 1000 --breakdown 100 250 \
        --candidates 64 --full-candidates 8 --configurations full 100-250-1000-eta8 \
        --sgd-images 256                            # the committed result, 10 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas_service.data import load_task  # noqa: E402
from nas_service.db import make_engine, migrate, queue, write_session  # noqa: E402
from nas_service.graph import ArchitectureGraph  # noqa: E402
from nas_service.scoring import ArchitectureScorer, kendall_tau  # noqa: E402
from nas_service.scoring.fidelity import FidelitySchedule  # noqa: E402
from nas_service.search import CheckpointStore, Worker  # noqa: E402
from nas_service.training.evaluate import sgd_train  # noqa: E402
from nas_service.training.ghn_training import held_out_architectures  # noqa: E402
from nas_service.training.ranking import training_config_of  # noqa: E402

TASK = "fashion-mnist"
GROUND_TRUTH = ROOT / "bench/results/ranking-fashion-mnist/ground-truth.json"
OUT = ROOT / "bench/results/multi_fidelity_bench.json"
TRUTH_SUFFIX = "|fashion-mnist/55000|5|all|0"
SGD_SUFFIX = "|fashion-mnist/55000|1|all|0|val|eval=2000"
EPOCH_IMAGES = 55_000
SGD_EVAL_IMAGES = 2000
TOP_FRACTION = 0.05
MAX_FLOPS = 20_000_000  # the bundled GHN's training range, as in search_bench.py
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

CONFIGURATIONS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "250-1000-eta4": {"rungs": [250, 1000], "eta": 4, "bracket": 16},
    "125-1000-eta4": {"rungs": [125, 1000], "eta": 4, "bracket": 16},
    "125-1000-eta8": {"rungs": [125, 1000], "eta": 8, "bracket": 32},
    "125-250-1000-eta4": {"rungs": [125, 250, 1000], "eta": 4, "bracket": 32},
    "100-250-1000-eta4": {"rungs": [100, 250, 1000], "eta": 4, "bracket": 64},
    "100-250-1000-eta8": {"rungs": [100, 250, 1000], "eta": 8, "bracket": 64},
}


def _save(result: dict[str, Any], out: Path = OUT) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


# ---- 1. rungs against trained accuracy ----------------------------------------------------------


def ground_truth_architectures(scorer: ArchitectureScorer, held_out: int
                               ) -> list[tuple[ArchitectureGraph, float, float]]:
    """``(graph, trained accuracy, 1-epoch SGD validation accuracy)`` of every held-out
    architecture the ground-truth file holds."""
    truth = json.loads(GROUND_TRUTH.read_text())
    spec = scorer.check_task(TASK)
    graphs = held_out_architectures(training_config_of(scorer.ghn), held_out, spec.input_shape,
                                    spec.num_classes)
    found = []
    for g in graphs:
        h = g.content_hash()
        if h + TRUTH_SUFFIX in truth and h + SGD_SUFFIX in truth:
            found.append((g, truth[h + TRUTH_SUFFIX]["accuracy"],
                          truth[h + SGD_SUFFIX]["accuracy"]))
    return found


def score_rungs(scorer: ArchitectureScorer, archs: Sequence[tuple[ArchitectureGraph, float, float]],
                rungs: Sequence[int]) -> dict[str, Any]:
    spec = scorer.check_task(TASK)
    scorer.task_tensors(spec)  # load the data before timing anything
    trained = [t for _, t, _ in archs]
    out: dict[str, Any] = {}
    for images in rungs:
        fidelity = scorer.fidelity_of_images(images, spec)
        view = scorer.at_fidelity(fidelity, spec)
        accuracies, rankings, seconds = [], [], []
        for graph, _, _ in archs:
            started = time.perf_counter()
            (scored,) = view.score([graph], spec)
            seconds.append(time.perf_counter() - started)
            if isinstance(scored, Exception):
                raise scored
            accuracies.append(scored.accuracy)
            rankings.append(scored.ranking["value"] if scored.ranking else scored.accuracy)
        out[str(images)] = {
            "images": fidelity.images, "ghn_version": view.ghn_version,
            "recalibration_images": fidelity.recalibration_batches * view.recalibration_batch_size,
            "kendall_tau_predicted_accuracy": round(kendall_tau(accuracies, trained), 4),
            "kendall_tau_ranking_value": round(kendall_tau(rankings, trained), 4),
            "seconds_per_architecture": round(statistics.mean(seconds), 4),
            "per_architecture": [{"name": g.name, "predicted_accuracy": a, "ranking_value": r,
                                  "seconds": round(s, 4)}
                                 for (g, _, _), a, r, s in zip(archs, accuracies, rankings,
                                                               seconds, strict=True)],
        }
        print(f"  rung {images:>5} images: tau {out[str(images)]['kendall_tau_ranking_value']:.3f}"
              f" (accuracy alone {out[str(images)]['kendall_tau_predicted_accuracy']:.3f}), "
              f"{out[str(images)]['seconds_per_architecture']:.3f} s", flush=True)
    return out


def reused_rung(scorer: ArchitectureScorer,
                archs: Sequence[tuple[ArchitectureGraph, float, float]], path: Path,
                images: int, spot_checks: int) -> dict[str, Any]:
    """The rung of ``images`` validation images as an earlier result file holds it, instead of
    scoring every architecture again: its architectures must be these, and the first
    ``spot_checks`` of them are scored again and must give the stored predicted accuracy
    exactly (scores are deterministic), which shows the protocol has not changed since."""
    stored = json.loads(path.read_text())["rungs"][str(images)]
    names = [g.name for g, _, _ in archs]
    if [a["name"] for a in stored["per_architecture"]] != names:
        raise SystemExit(f"{path}: rung {images} holds other architectures")
    spec = scorer.check_task(TASK)
    view = scorer.at_fidelity(scorer.fidelity_of_images(images, spec), spec)
    for (graph, _, _), entry in list(zip(archs, stored["per_architecture"],
                                         strict=True))[:spot_checks]:
        (scored,) = view.score([graph], spec)
        if isinstance(scored, Exception) or scored.accuracy != entry["predicted_accuracy"]:
            raise SystemExit(f"{path}: rung {images} of {graph.name} no longer reproduces")
    print(f"  rung {images:>5} images: reused from {path.name} ({spot_checks} spot checks "
          f"reproduced), tau {stored['kendall_tau_ranking_value']:.3f}", flush=True)
    return {**stored, "ghn_version": view.ghn_version, "reused_from": str(path.relative_to(ROOT))
            if path.is_relative_to(ROOT) else str(path), "spot_checks": spot_checks}


def rung_breakdown(scorer: ArchitectureScorer, images: int, candidates: int, seed: int
                   ) -> dict[str, Any]:
    """Where the CPU time of a score at ``images`` validation images goes, per candidate: the
    steps of :meth:`ArchitectureScorer.score` and of storing a score, timed one by one on the
    throughput job's ``cells`` architectures (GHN batches of 8)."""
    from nas_service.graph import to_module
    from nas_service.scoring.evaluation import accuracy, load_parameters, recalibrate
    from nas_service.search.checkpoints import checkpoint_metadata
    from nas_service.search.strategies import check_constraints, make_strategy

    spec = scorer.check_task(TASK)
    view = scorer.at_fidelity(scorer.fidelity_of_images(images, spec), spec)
    data = view.task_tensors(spec)
    constraints = {"max_flops": MAX_FLOPS}
    strategy = make_strategy("random", "cells", seed=seed, input_shape=spec.input_shape,
                             num_classes=spec.num_classes, constraints=constraints)
    seconds: dict[str, float] = dict.fromkeys(
        ("propose", "ghn_forward", "build_network", "recalibrate_and_readout", "evaluate",
         "copy_state", "checkpoint_write"), 0.0)

    def timed(step: str, started: float) -> None:
        seconds[step] += time.process_time() - started

    started = time.process_time()
    graphs = [p.graph for p in (strategy.propose(i, {}) for i in range(candidates))
              if p.graph is not None and check_constraints(p.graph, constraints) is None]
    timed("propose", started)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        store = CheckpointStore(Path(tmp))
        for start in range(0, len(graphs), 8):
            batch = graphs[start:start + 8]
            started = time.process_time()
            predicted = view.ghn.predict(batch)
            timed("ghn_forward", started)
            for graph, params in zip(batch, predicted, strict=True):
                started = time.process_time()
                net = load_parameters(to_module(graph, initialize=False), params)
                if view.channels_last:
                    net = net.to(memory_format=torch.channels_last)
                timed("build_network", started)
                started = time.process_time()
                recalibrate(net, data.recalibration, data.recalibration_labels,
                            one_pass=len(data.recalibration) == 1)
                timed("recalibrate_and_readout", started)
                started = time.process_time()
                value = accuracy(net, data.val_images, data.val_labels,
                                 batch_size=view.eval_batch_size)
                timed("evaluate", started)
                started = time.process_time()
                state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
                timed("copy_state", started)
                started = time.process_time()
                store.write(state, checkpoint_metadata(graph, task=TASK, scores={"value": value},
                                                       ghn_version=view.ghn_version))
                timed("checkpoint_write", started)
    per = {k: round(v / len(graphs), 4) for k, v in seconds.items()}
    total = sum(per.values())
    print(f"  {images} images: {total:.3f} CPU s per candidate: "
          + ", ".join(f"{k} {v:.3f}" for k, v in per.items()), flush=True)
    return {"images": images,
            "recalibration_images": sum(len(y) for y in data.recalibration_labels),
            "channels_last": view.channels_last, "candidates": len(graphs),
            "cpu_seconds_per_candidate": per, "total_cpu_seconds_per_candidate": round(total, 4)}


def sgd_costs(archs: Sequence[tuple[ArchitectureGraph, float, float]], sgd_images: int
              ) -> list[float]:
    """Seconds of one epoch of SGD per architecture on this machine: ``sgd_images`` training
    images timed and scaled to an epoch, plus the evaluation on the validation images."""
    data = load_task(TASK)
    x, y = data.tensors("val")
    x, y = x[:SGD_EVAL_IMAGES], y[:SGD_EVAL_IMAGES]
    costs = []
    for graph, _, _ in archs:
        started = time.perf_counter()
        net = sgd_train(graph, data, epochs=1, max_images=sgd_images)
        train = time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(x), 100):
                net(x[i:i + 100])
        costs.append(train * EPOCH_IMAGES / sgd_images + time.perf_counter() - started)
    return costs


# ---- 2. throughput --------------------------------------------------------------------------


def worker_throughput(scorer: ArchitectureScorer, name: str, fidelity: dict[str, Any] | None,
                      candidates: int, batch_size: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/nas.db"
        migrate.upgrade(url)
        engine = make_engine(url)
        with write_session(engine) as session:
            job, _ = queue.create_job(session, space="cells", task=TASK, strategy="random",
                                      seed=seed, budget_candidates=candidates,
                                      constraints={"max_flops": MAX_FLOPS}, fidelity=fidelity)
        worker = Worker(engine, scorer, CheckpointStore(Path(tmp) / "checkpoints"),
                        batch_size=batch_size, lease_seconds=120, heartbeat_seconds=20)
        wall, cpu = time.perf_counter(), time.process_time()
        worker.run(once=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        from nas_service.db import listings, read_session
        with read_session(engine) as session:
            row = listings.get_job(session, job.id)
            rows = listings.list_candidates(session, job.id, order_by="index", limit=500).items
            status = row.status.value
        engine.dispose()
    scored = [c for c in rows if c.status.value == "scored"]
    top = FidelitySchedule.from_config(fidelity, 1000).top_rung
    result = {"configuration": name, "fidelity": fidelity, "status": status,
              "candidates": len(rows), "scored": len(scored),
              "full_scores": sum(1 for c in scored if (c.rung or 0) == top),
              "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
              "candidates_per_minute": round(len(scored) / wall * 60, 2),
              "candidates_per_cpu_minute": round(len(scored) / cpu * 60, 2),
              "cpu_seconds_per_candidate": round(cpu / max(len(scored), 1), 4)}
    print(f"  {name}: {result['candidates_per_cpu_minute']} candidates per CPU minute, "
          f"{result['candidates_per_minute']} per wall-clock minute "
          f"({len(scored)} in {wall:.1f} s, {cpu:.1f} CPU s, {result['full_scores']} full)",
          flush=True)
    return result


# ---- 3. search quality, simulated ----------------------------------------------------------


def simulate(rng: random.Random, pool: Sequence[dict[str, Any]], schedule: FidelitySchedule,
             rung_keys: Sequence[str], score_key: str, cost_key: str, top: set[int],
             max_seconds: float) -> float | None:
    """Seconds until the incumbent of one simulated random search is in ``top`` (``None``: not
    within ``max_seconds``). Architecture ``a`` scores ``a[score_key][rung]`` and costs
    ``a[cost_key][rung]`` at each rung of ``rung_keys``."""
    clock, best = 0.0, (-math.inf, -1)
    while clock < max_seconds:
        bracket = [rng.randrange(len(pool)) for _ in range(schedule.bracket_size
                                                           if len(rung_keys) > 1 else 1)]
        alive = list(range(len(bracket)))
        for k, key in enumerate(rung_keys):
            if k:
                chosen = schedule.promoted({j: pool[bracket[j]][score_key][rung_keys[k - 1]]
                                            for j in alive})
                alive = chosen
            for j in alive:
                a = pool[bracket[j]]
                clock += a[cost_key][key]
                if k == len(rung_keys) - 1 and a[score_key][key] > best[0]:
                    best = (a[score_key][key], bracket[j])
                    if bracket[j] in top:
                        return clock
    return None


def search_quality(pool: list[dict[str, Any]], runs: int, seed: int,
                   measured: Sequence[str]) -> dict[str, Any]:
    ranked = sorted(range(len(pool)), key=lambda i: -pool[i]["trained"])
    top = set(ranked[:max(1, math.ceil(TOP_FRACTION * len(pool)))])
    full = "1000"
    strategies: dict[str, tuple[FidelitySchedule, list[str], str, str]] = {}
    for score_key in ("ranking_value", "predicted_accuracy"):
        strategies[f"ghn-full/{score_key}"] = (FidelitySchedule.single(1000), [full],
                                               score_key, "ghn_seconds")
        for name, config in CONFIGURATIONS.items():
            if config is None:
                continue
            schedule = FidelitySchedule.from_config(config, 1000)
            if not all(str(r) in measured for r in schedule.rungs):
                continue
            strategies[f"ghn-{name}/{score_key}"] = (schedule, [str(r) for r in schedule.rungs],
                                                     score_key, "ghn_seconds")
    strategies["sgd-1-epoch"] = (FidelitySchedule.single(1000), ["sgd"], "sgd_value",
                                 "sgd_seconds")
    horizon = 200 * statistics.mean(a["sgd_seconds"]["sgd"] for a in pool)
    out: dict[str, Any] = {"top_fraction": TOP_FRACTION, "top_architectures": sorted(
        pool[i]["name"] for i in top), "pool": len(pool), "runs": runs,
        "horizon_seconds": round(horizon, 1), "strategies": {}}
    for name, (schedule, keys, score_key, cost_key) in strategies.items():
        rng = random.Random(f"{seed}/{name}")
        times = [simulate(rng, pool, schedule, keys, score_key, cost_key, top, horizon)
                 for _ in range(runs)]
        found = sorted(t for t in times if t is not None)
        out["strategies"][name] = {
            "found_fraction": round(len(found) / runs, 4),
            "median_seconds": round(statistics.median(found), 2) if found else None,
            "mean_seconds": round(statistics.mean(found), 2) if found else None,
        }
    sgd = out["strategies"]["sgd-1-epoch"]["median_seconds"]
    for entry in out["strategies"].values():
        entry["median_speedup_vs_sgd"] = (round(sgd / entry["median_seconds"], 1)
                                          if sgd and entry["median_seconds"] else None)
    return out


# ---- 4. the database's share ------------------------------------------------------------------


def database_seconds(url: str, calls: int) -> dict[str, float]:
    """Median seconds of ``record_candidate`` and ``promote_candidate`` on the database at
    ``url`` (migrated here)."""
    migrate.upgrade(url)
    engine = make_engine(url)
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task=TASK, strategy="random", seed=0,
                                  budget_candidates=calls,
                                  fidelity={"rungs": [10, 20], "eta": 2, "bracket": 2})
    claimed = queue.claim_next_job(engine, "bench", 600)
    assert claimed is not None
    record, promote = [], []
    for i in range(calls):
        started = time.perf_counter()
        queue.record_candidate(engine, job.id, claimed.lease_token, i, status="scored",
                               score=random.random(), rung=0, eval_images=10, seconds=1.0)
        record.append(time.perf_counter() - started)
    for i in range(0, calls, 2):
        started = time.perf_counter()
        queue.promote_candidate(engine, job.id, claimed.lease_token, i, rung=1,
                                eval_images=20, score=random.random(), seconds=1.0)
        promote.append(time.perf_counter() - started)
    engine.dispose()
    return {"record_candidate_seconds": round(statistics.median(record), 5),
            "promote_candidate_seconds": round(statistics.median(promote), 5)}


def postgres_database_seconds(admin_url: str, calls: int) -> dict[str, Any]:
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    try:
        admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - reported, the rest of the benchmark goes on
        return {"error": str(e).splitlines()[0]}
    name = f"nas_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        return database_seconds(make_url(admin_url).set(database=name)
                                .render_as_string(hide_password=False), calls)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def scaling_model(cpu_per_candidate: float, db_per_candidate: float,
                  workers: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """Speed-up of n workers on n cores over one: the database's share serialises."""
    c, d = cpu_per_candidate, db_per_candidate
    return {str(n): round(min(n, (c + d) / d) if d > 0 else float(n), 2) for n in workers}


# ---- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer architectures, candidates "
                                                             "and simulated runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rungs", type=int, nargs="+", default=[125, 250, 1000])
    parser.add_argument("--archs", type=int, default=None,
                        help="at most this many ground-truth architectures (default: all)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="candidates per throughput job (the full-score job: a quarter)")
    parser.add_argument("--batch-size", type=int, default=8, help="graphs per GHN batch")
    parser.add_argument("--sgd-images", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--configurations", nargs="+", choices=list(CONFIGURATIONS),
                        default=list(CONFIGURATIONS), help="job fidelities of the throughput "
                                                           "runs (default: all)")
    parser.add_argument("--full-candidates", type=int, default=None,
                        help="candidates of the full-score job (default: --candidates)")
    parser.add_argument("--reuse-rungs", type=int, nargs="*", default=[],
                        help="rungs taken from --reuse-from instead of scored again (a few "
                             "architectures are scored again and must reproduce)")
    parser.add_argument("--reuse-from", type=Path, default=OUT)
    parser.add_argument("--breakdown", type=int, nargs="*", default=[],
                        help="rungs (validation images) whose CPU time is broken down by step")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--postgres-url", default=os.environ.get("NAS_TEST_POSTGRES_URL",
                                                                 DEFAULT_POSTGRES_URL))
    args = parser.parse_args()
    quick, full = {"archs": 16, "candidates": 16, "sgd_images": 256, "runs": 300}, {
        "archs": None, "candidates": 32, "sgd_images": 512, "runs": 2000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "benchmark": "multi_fidelity", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime()),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": args.threads,
        "load_average": list(os.getloadavg()), "quick": args.quick,
        "command": "python " + " ".join(sys.argv),
    }
    scorer = ArchitectureScorer.load(device="cpu", eval_images=1000)
    archs = ground_truth_architectures(scorer, 50)[:args.archs]
    rungs = sorted(set(args.rungs) | set(args.reuse_rungs))
    print(f"1. {len(archs)} architectures with ground truth, rungs {rungs}", flush=True)
    scored = score_rungs(scorer, archs, [r for r in rungs if r not in args.reuse_rungs])
    result["rungs"] = {str(r): scored[str(r)] if str(r) in scored else
                       reused_rung(scorer, archs, args.reuse_from, r, spot_checks=3)
                       for r in rungs}
    result["architectures"] = len(archs)
    _save(result, args.out)

    if args.breakdown:
        print("CPU time of one score, by step", flush=True)
        result["breakdown"] = [rung_breakdown(scorer, images, 16, seed=1)
                               for images in args.breakdown]
        _save(result, args.out)

    print("2. worker throughput on cells (SQLite)", flush=True)
    throughput = []
    for name in args.configurations:
        # The same seed for every configuration: the first candidates are the same architectures.
        count = args.full_candidates if name == "full" and args.full_candidates else \
            args.candidates
        throughput.append(worker_throughput(scorer, name, CONFIGURATIONS[name], count,
                                            args.batch_size, seed=1))
        result["throughput"] = throughput
        _save(result, args.out)

    print(f"3. one epoch of SGD: {args.sgd_images} images timed per architecture", flush=True)
    sgd = sgd_costs(archs, args.sgd_images)
    pool = []
    for i, (graph, trained, sgd_value) in enumerate(archs):
        pool.append({"name": graph.name, "trained": trained, "sgd_seconds": {"sgd": sgd[i]},
                     "ghn_seconds": {r: result["rungs"][r]["per_architecture"][i]["seconds"]
                                     for r in result["rungs"]},
                     "ranking_value": {r: result["rungs"][r]["per_architecture"][i]
                                       ["ranking_value"] for r in result["rungs"]},
                     "predicted_accuracy": {r: result["rungs"][r]["per_architecture"][i]
                                            ["predicted_accuracy"] for r in result["rungs"]},
                     "sgd_value": {"sgd": sgd_value}})
    result["sgd_seconds_per_architecture"] = round(statistics.mean(sgd), 2)
    result["search_quality"] = search_quality(pool, args.runs, seed=0,
                                              measured=list(result["rungs"]))
    _save(result, args.out)

    print("4. database time per candidate", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        database = {"sqlite": database_seconds(f"sqlite:///{tmp}/db.sqlite", 200 if not
                                               args.quick else 40)}
    database["postgresql"] = postgres_database_seconds(args.postgres_url,
                                                       200 if not args.quick else 40)
    full = next(t for t in throughput if t["configuration"] == "full")
    best = max(throughput, key=lambda t: t["candidates_per_cpu_minute"])
    db = database["postgresql"].get("record_candidate_seconds",
                                    database["sqlite"]["record_candidate_seconds"])
    result["database"] = database
    result["scaling_model"] = {
        "cpu_seconds_per_candidate": best["cpu_seconds_per_candidate"],
        "database_seconds_per_candidate": db,
        "speedup_by_workers": scaling_model(best["cpu_seconds_per_candidate"], db),
        "configuration": best["configuration"],
    }
    quality = result["search_quality"]["strategies"]
    result["summary"] = {
        "full_candidates_per_cpu_minute": full["candidates_per_cpu_minute"],
        "full_candidates_per_minute": full["candidates_per_minute"],
        "candidates_per_cpu_minute": {t["configuration"]: t["candidates_per_cpu_minute"]
                                      for t in throughput},
        "best_configuration": best["configuration"],
        "best_candidates_per_cpu_minute": best["candidates_per_cpu_minute"],
        "target_candidates_per_minute": 120,
        "kendall_tau_by_rung": {r: v["kendall_tau_ranking_value"]
                                for r, v in result["rungs"].items()},
        "median_seconds_to_top5": {k: v["median_seconds"] for k, v in quality.items()},
        "median_speedup_vs_sgd": {k: v["median_speedup_vs_sgd"] for k, v in quality.items()},
        "speedup_4_workers_model": result["scaling_model"]["speedup_by_workers"]["4"],
    }
    _save(result, args.out)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
