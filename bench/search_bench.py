"""Search throughput on Fashion-MNIST: candidates scored per minute by real ``nas-service worker``
processes, against scoring the same candidates by one epoch of SGD training.

Three measurements:

1. **one worker, SQLite** (the embedded default): a random search job on the ``cells`` space,
   then one on ``macro``, each with a budget of ``--seconds`` (counted by the worker from its
   claim) and more candidates than it can reach. Target: at least 120 scored candidates per
   minute on the cell space.
2. **the baseline**: ``--sgd-candidates`` scored candidates of the cell job, evenly spread over
   its indices (the job's distribution of sizes, not its first few), are trained from scratch by ``nas_service.training.evaluate.sgd_train`` (``--sgd-epochs``, 1) and
   scored on the same validation images as the service, the way the service scores (same batch
   size); seconds per candidate and the ratio to the GHN's (target: at least 50x
   faster): ``speedup_vs_sgd`` compares each method's seconds on the same candidates (the GHN's
   as the worker recorded them: its share of the GHN batch, recalibration and evaluation),
   ``speedup_vs_sgd_throughput`` the SGD seconds with the job's seconds per scored candidate
   end to end. With ``--sgd-max-images`` only part of an epoch is
   trained and the full epoch's time is extrapolated from it (the report says so).
3. **``--pg-workers`` workers on PostgreSQL** (default 2): a fresh database is created on the
   server of ``--postgres-url``, migrated with ``nas-service db upgrade`` and dropped at the end;
   one cell job per worker, run concurrently. A job is run by one worker at a time (its lease),
   so workers scale over jobs, not within one. The CPU threads are split between the workers.

Rates come from the candidates' records in the database (their ``created_at``, on the database
clock). ``steady`` is the rate after the first GHN batch: from the moment the last candidate of
the first batch was recorded to the last record, which leaves out the worker's start-up (its
first batch also loads the task's data). ``overall`` divides by the job's whole running time.
Only ``scored`` candidates count (``rejected`` and ``failed`` ones are listed beside them). The
jobs carry a ``max_flops`` constraint of ``--max-flops`` (20 M by default: the range the bundled
GHN was trained on; ``0`` for none), which random search samples within.

With ``--fidelity`` the jobs score in multi-fidelity rungs (every candidate on the first rung's
images, the best of each bracket on the next; ``bench/multi_fidelity_bench.py`` measures what
each rung ranks like); a candidate counts as scored at its first rung.

Every process the benchmark starts is stopped when it ends, fails or is interrupted.

    python bench/search_bench.py                  # writes bench/results/search_bench.json
    python bench/search_bench.py --seconds 10 --sgd-candidates 2 --sgd-max-images 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.processes import (
    ROOT,
    Child,
    children,
    machine_info,
    nas_service_command,
    run_benchmark,
    service_env,
)

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sqlalchemy import Engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from nas_service.db import (  # noqa: E402
    Architecture,
    Candidate,
    CandidateStatus,
    JobEvent,
    listings,
    make_engine,
    queue,
    read_session,
    write_session,
)
from nas_service.graph import ArchitectureGraph  # noqa: E402
from nas_service.settings import Settings  # noqa: E402

TASK = "fashion-mnist"
GHN_TRAINING_MAX_FLOPS = 20_000_000
"""The bundled GHN's training distribution (``max_flops`` of its training record)."""
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TERMINAL = ("succeeded", "failed", "cancelled")
MIGRATE_SECONDS = 300
TARGET_PER_MINUTE = 120
TARGET_SPEEDUP = 50


# ------------------------------------------------------------------------------------------------
# Jobs run by worker processes
# ------------------------------------------------------------------------------------------------


def _migrate(env: dict[str, str]) -> None:
    done = subprocess.run(nas_service_command("db", "upgrade"), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=MIGRATE_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"nas-service db upgrade failed:\n{done.stdout}{done.stderr}")


def _create_job(engine: Engine, space: str, seed: int, args: argparse.Namespace) -> str:
    constraints = {"max_flops": args.max_flops} if args.max_flops else {}
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space=space, task=TASK, strategy="random", seed=seed,
                                  budget_candidates=args.max_candidates,
                                  budget_seconds=args.seconds, constraints=constraints,
                                  fidelity=args.fidelity)
        return job.id


def _wait_for_jobs(engine: Engine, job_ids: Sequence[str], workers: Sequence[Child],
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while True:
        with read_session(engine) as session:
            jobs = [listings.get_job(session, job_id) for job_id in job_ids]
            states = [(j.status.value, j.progress_done) for j in jobs if j is not None]
        if all(status in TERMINAL for status, _ in states):
            return
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout:g} s: {states}")
        if time.monotonic() - last_print > 10:
            print("  " + ", ".join(f"{s} ({n} recorded)" for s, n in states), flush=True)
            last_print = time.monotonic()
        time.sleep(0.5)


def _seconds(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds()


def _per_minute(count: int, seconds: float | None) -> float | None:
    return round(count / seconds * 60, 2) if seconds and seconds > 0 else None


def job_report(engine: Engine, job_id: str, batch_size: int) -> dict[str, Any]:
    """The job's throughput, from its candidates' records."""
    with read_session(engine) as session:
        job = listings.get_job(session, job_id)
        assert job is not None
        candidates = list(session.scalars(
            select(Candidate).where(Candidate.job_id == job_id).order_by(Candidate.index)))
        events = [e.kind for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]
        report: dict[str, Any] = {
            "job_id": job.id, "space": job.space, "seed": job.seed, "status": job.status.value,
            "attempts": job.attempts, "constraints": job.constraints,
            "budget_seconds": job.budget_seconds, "events": events,
            "lease_owner": job.lease_owner,
        }
        started, finished = job.started_at, job.finished_at
    statuses = Counter(c.status.value for c in candidates)
    scored = [c for c in candidates if c.status == CandidateStatus.SCORED]
    running = _seconds(started, finished) if started and finished else None
    report.update(candidates=dict(statuses), scored=len(scored), running_s=running,
                  scored_per_minute_overall=_per_minute(len(scored), running),
                  recorded_per_minute_overall=_per_minute(len(candidates), running))
    # Steady state: after the first GHN batch (indices 0 .. batch_size-1 of a random search).
    first = [c for c in candidates if c.index < batch_size]
    rest = [c for c in candidates if c.index >= batch_size]
    steady = None
    if first and rest:
        window = _seconds(max(c.created_at for c in first), max(c.created_at for c in rest))
        steady = {"window_s": round(window, 2),
                  "scored": sum(c.status == CandidateStatus.SCORED for c in rest),
                  "recorded": len(rest)}
        steady["scored_per_minute"] = _per_minute(steady["scored"], window)
        steady["recorded_per_minute"] = _per_minute(steady["recorded"], window)
    report["steady"] = steady
    if scored:
        seconds = [c.seconds for c in scored if c.seconds is not None]
        report["scored_candidate"] = {
            "median_seconds": round(statistics.median(seconds), 4) if seconds else None,
            "mean_seconds": round(statistics.fmean(seconds), 4) if seconds else None,
            "median_flops": int(statistics.median(c.flops or 0 for c in scored)),
            "median_parameters": int(statistics.median(c.num_parameters or 0 for c in scored)),
            "best_score": max(c.score or 0.0 for c in scored),
            "median_score": round(statistics.median(c.score or 0.0 for c in scored), 4),
        }
    return report


def run_workers(database_url: str, data_dir: Path, jobs: Sequence[tuple[str, int]], workers: int,
                threads: int, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Queues ``jobs`` ((space, seed) each), runs them with ``workers`` worker processes of
    ``threads`` threads each until all have finished, and reports each job."""
    nas = {"NAS_DATABASE_URL": database_url, "NAS_WORKER_POLL_SECONDS": "0.5"}
    if args.eval_images is not None:
        nas["NAS_EVAL_IMAGES"] = str(args.eval_images)
    if args.batch_size is not None:
        nas["NAS_GHN_BATCH_SIZE"] = str(args.batch_size)
    env = service_env(data_dir, threads=threads, **nas)
    _migrate(env)
    engine = make_engine(database_url)
    try:
        job_ids = [_create_job(engine, space, seed, args) for space, seed in jobs]
        print(f"{label}: {len(job_ids)} job(s) of {args.seconds:g} s, {workers} worker(s) of "
              f"{threads} thread(s)", flush=True)
        with children() as started:
            for i in range(workers):
                started.append(Child(f"worker {i}", nas_service_command(
                    "worker", "--id", f"bench-{label}-{i}"), env, data_dir / f"worker-{i}.log"))
            timeout = args.seconds * len(jobs) / workers + args.job_timeout
            _wait_for_jobs(engine, job_ids, started, timeout)
        reports = [job_report(engine, job_id, args.batch_size or _default_batch_size())
                   for job_id in job_ids]
    finally:
        engine.dispose()
    rates = [_rate(r) for r in reports]
    total = [rate for rate, _ in rates if rate is not None]
    return {"workers": workers, "threads_per_worker": threads, "jobs": reports,
            "scored_per_minute_total": round(sum(total), 2) if len(total) == len(rates) else None,
            "rate_basis": sorted({basis for _, basis in rates})}


def _rate(job: dict[str, Any]) -> tuple[float | None, str]:
    """The job's steady rate, or its overall rate when it recorded one batch only."""
    if job["steady"] and job["steady"]["scored_per_minute"] is not None:
        return job["steady"]["scored_per_minute"], "steady"
    return job["scored_per_minute_overall"], "overall (a single GHN batch: no steady state)"


def _default_batch_size() -> int:
    return Settings.model_fields["ghn_batch_size"].default


# ------------------------------------------------------------------------------------------------
# The baseline: one epoch of SGD per candidate
# ------------------------------------------------------------------------------------------------


def sgd_baseline(database_url: str, job_id: str, count: int, args: argparse.Namespace
                 ) -> dict[str, Any]:
    """Trains ``count`` of the job's scored candidates, evenly spread over its indices, from
    scratch and scores them on the service's validation images."""
    from nas_service.data import load_task
    from nas_service.scoring.evaluation import accuracy
    from nas_service.scoring.scorer import CPU_EVAL_BATCH_SIZE
    from nas_service.training.evaluate import evaluation_tensors, sgd_train

    engine = make_engine(database_url)
    try:
        with read_session(engine) as session:
            rows = session.execute(
                select(Candidate.index, Candidate.seconds, Candidate.score, Architecture.graph,
                       Architecture.scores)
                .join(Architecture, Architecture.id == Candidate.architecture_id)
                .where(Candidate.job_id == job_id, Candidate.status == CandidateStatus.SCORED)
                .order_by(Candidate.index)).all()
    finally:
        engine.dispose()
    if not rows:
        return {"skipped": "the job scored no candidate"}
    if len(rows) > count:
        step = (len(rows) - 1) / max(count - 1, 1)
        rows = [rows[round(i * step)] for i in range(count)]
    torch.set_num_threads(args.threads)
    task = load_task(TASK)
    train_images = len(task.split("train"))
    per_epoch = min(train_images, args.sgd_max_images or train_images)
    records = []
    for row in rows:
        graph = ArchitectureGraph.from_json(row.graph)
        x, y = evaluation_tensors(task, "val", row.scores["images"], torch.device("cpu"))
        print(f"  sgd: candidate {row.index} ({graph.flops / 1e6:.1f} M MACs), "
              f"{args.sgd_epochs:g} epoch(s) of {per_epoch} images ...", flush=True)
        started = time.perf_counter()
        net = sgd_train(graph, task, epochs=args.sgd_epochs, max_images=args.sgd_max_images,
                        device="cpu")
        trained = time.perf_counter()
        # Scored as the service scores on a CPU, so the baseline's time is its training.
        value = accuracy(net, x, y, "recalibrated", CPU_EVAL_BATCH_SIZE)
        scored = time.perf_counter()
        train_s, score_s = trained - started, scored - trained
        full_epoch_train_s = train_s * train_images / per_epoch
        records.append({
            "index": row.index, "flops": graph.flops, "parameters": graph.num_parameters,
            "train_s": round(train_s, 2), "score_s": round(score_s, 2),
            "seconds": round(full_epoch_train_s + score_s, 2), "sgd_accuracy": value,
            "ghn_score": row.score, "ghn_seconds": row.seconds})
    seconds = statistics.fmean(r["seconds"] for r in records)
    ghn_seconds = statistics.fmean(r["ghn_seconds"] for r in records if r["ghn_seconds"])
    return {
        "candidates": records, "epochs": args.sgd_epochs, "images_per_epoch_trained": per_epoch,
        "train_images": train_images,
        "extrapolated": per_epoch < train_images,
        "seconds_per_candidate": round(seconds, 2),
        "same_candidates_ghn_seconds": round(ghn_seconds, 4),
        "speedup_same_candidates": round(seconds / ghn_seconds, 1) if ghn_seconds else None,
        "threads": args.threads,
    }


# ------------------------------------------------------------------------------------------------
# PostgreSQL: a database of our own
# ------------------------------------------------------------------------------------------------


def _postgres_run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    admin_url = make_url(args.postgres_url)
    name = f"nas_bench_search_{os.getpid()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as e:
        admin.dispose()
        reason = f"cannot create a database on {admin_url.render_as_string()}: {e.orig or e}"
        print(f"PostgreSQL run skipped: {reason}", file=sys.stderr)
        return {"skipped": reason}
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        runs = {}
        for workers in args.pg_workers:
            threads = max(1, args.threads // workers)
            jobs = [("cells", args.seed + 100 * workers + i) for i in range(workers)]
            pg_dir = data_dir / f"postgres-{workers}"
            pg_dir.mkdir()
            runs[str(workers)] = run_workers(url, pg_dir, jobs, workers, threads, args,
                                             f"postgres-{workers}w")
        return {"database": f"{admin_url.set(database=name).render_as_string()} "
                            "(created and dropped by the benchmark)", "runs": runs}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="nas-search-bench-"))
    before = machine_info()
    try:
        sqlite_dir = data_dir / "sqlite"
        sqlite_dir.mkdir()
        sqlite_url = f"sqlite:///{sqlite_dir / 'nas.db'}"
        one = run_workers(sqlite_url, sqlite_dir, [("cells", args.seed), ("macro", args.seed)],
                          1, args.threads, args, "sqlite-1w")
        cells, macro = one["jobs"]
        baseline: dict[str, Any] = {"skipped": "--sgd-candidates 0"}
        if args.sgd_candidates:
            baseline = sgd_baseline(sqlite_url, cells["job_id"], args.sgd_candidates, args)
        postgres: dict[str, Any] = {"skipped": "--no-postgres"}
        if not args.no_postgres and args.pg_workers:
            postgres = _postgres_run(args, data_dir)
    finally:
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    cells_rate, basis = _rate(cells)
    summary: dict[str, Any] = {
        "cells_scored_per_minute": cells_rate,
        "macro_scored_per_minute": _rate(macro)[0],
        "rate_basis": basis,
        "target_cells_per_minute": TARGET_PER_MINUTE,
        "cells_target_met": cells_rate is not None and cells_rate >= TARGET_PER_MINUTE,
    }
    if "seconds_per_candidate" in baseline:
        summary["sgd_seconds_per_candidate"] = baseline["seconds_per_candidate"]
        summary["ghn_seconds_same_candidates"] = baseline["same_candidates_ghn_seconds"]
        summary["speedup_vs_sgd"] = baseline["speedup_same_candidates"]
        if cells_rate:
            summary["ghn_seconds_per_candidate_end_to_end"] = round(60 / cells_rate, 4)
            summary["speedup_vs_sgd_throughput"] = round(
                baseline["seconds_per_candidate"] * cells_rate / 60, 1)
        summary["target_speedup"] = TARGET_SPEEDUP
        summary["speedup_target_met"] = (summary["speedup_vs_sgd"] or 0) >= TARGET_SPEEDUP
        summary["sgd_extrapolated"] = baseline["extrapolated"]
    for workers, r in (postgres.get("runs") or {}).items():
        summary[f"postgres_{workers}_workers_scored_per_minute"] = r["scored_per_minute_total"]
    defaults = Settings.model_fields
    return {
        "benchmark": "search",
        **before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "seconds_per_job": args.seconds, "strategy": "random", "task": TASK,
            "max_flops": args.max_flops or None, "threads": args.threads,
            "eval_images": args.eval_images, "eval_images_default": defaults["eval_images"].default,
            "ghn_batch_size": args.batch_size or _default_batch_size(),
            "fidelity": args.fidelity,
            "recalibration": f"{defaults['recalibration_batches'].default} x "
                             f"{defaults['recalibration_batch_size'].default} training images",
            "device": "NAS_DEVICE unset: automatic",
        },
        "summary": summary,
        "one_worker_sqlite": one,
        "sgd_baseline": baseline,
        "postgres": postgres,
    }


def _print_summary(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(f"torch {report['torch']}, {report['cpu_count']} CPUs, {report['settings']['threads']} "
          f"threads, load {report['load_average']} -> {report['load_average_after']}")
    for job in report["one_worker_sqlite"]["jobs"]:
        rate, basis = _rate(job)
        print(f"1 worker, SQLite, {job['space']:5s}: {rate} scored/min ({basis}; overall "
              f"{job['scored_per_minute_overall']}), candidates {job['candidates']}")
    if "speedup_vs_sgd" in s:
        print(f"SGD 1 epoch: {s['sgd_seconds_per_candidate']} s/candidate"
              f"{' (extrapolated)' if s['sgd_extrapolated'] else ''}; GHN "
              f"{s['ghn_seconds_same_candidates']} s on the same candidates -> "
              f"{s['speedup_vs_sgd']}x (end to end: {s.get('speedup_vs_sgd_throughput')}x)")
    for workers, r in (report["postgres"].get("runs") or {}).items():
        print(f"{workers} worker(s), PostgreSQL: {r['scored_per_minute_total']} scored/min in all "
              f"({[_rate(j)[0] for j in r['jobs']]}, {', '.join(r['rate_basis'])})")
    if "skipped" in report["postgres"]:
        print(f"PostgreSQL: skipped ({report['postgres']['skipped']})")


def _worker_counts(value: str) -> list[int]:
    counts = [int(v) for v in value.split(",") if v.strip()]
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="budget of each search job, seconds (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search jobs")
    parser.add_argument("--max-flops", type=int, default=GHN_TRAINING_MAX_FLOPS,
                        help="the jobs' max_flops constraint; 0: none (default: %(default)s)")
    parser.add_argument("--max-candidates", type=int, default=10_000,
                        help="candidate budget of each job, more than it reaches in --seconds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads of one worker (split between --pg-workers) and of the "
                             "SGD baseline (default: the CPU count)")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="NAS_EVAL_IMAGES of the workers (default: unset, the service's "
                             "default of 1,000 validation images)")
    parser.add_argument("--fidelity", type=json.loads, default=None, metavar="JSON",
                        help='the jobs\' multi-fidelity schedule, e.g. \'{"rungs": [100, 250, '
                             '1000], "eta": 8}\' (default: none, every candidate in full); '
                             'only scored candidates count, at whatever rung')
    parser.add_argument("--batch-size", type=int, default=None,
                        help="NAS_GHN_BATCH_SIZE of the workers (default: unset, the service's)")
    parser.add_argument("--sgd-candidates", type=int, default=3,
                        help="candidates trained by SGD for the baseline; 0: none (default: 3)")
    parser.add_argument("--sgd-epochs", type=float, default=1.0)
    parser.add_argument("--sgd-max-images", type=int, default=None,
                        help="train on this many images per epoch and extrapolate to the full "
                             "epoch (default: the full epoch)")
    parser.add_argument("--postgres-url", default=os.environ.get("NAS_BENCH_POSTGRES_URL",
                                                                 DEFAULT_POSTGRES_URL),
                        help="a database on the PostgreSQL server to create the benchmark's "
                             "database from (default: $NAS_BENCH_POSTGRES_URL or "
                             "%(default)s)")
    parser.add_argument("--pg-workers", type=_worker_counts, default=[2], metavar="N[,N...]",
                        help="worker counts to run on PostgreSQL (default: 2)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument("--job-timeout", type=float, default=900.0,
                        help="seconds a run may exceed its jobs' budgets before the benchmark "
                             "gives up (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/search_bench.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or args.max_candidates < 1:
        parser.error("--seconds, --threads and --max-candidates must be positive")
    report = run_benchmark(lambda: run(args), _print_summary, args.output)
    if report is None:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
