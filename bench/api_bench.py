"""``POST /v1/architectures`` under concurrent clients, against a real ``nas-service serve``.

The server is the embedded default: a uvicorn process with the bundled Fashion-MNIST GHN, a
SQLite file and checkpoints in a temporary data folder, its in-process worker idle. The
benchmark drives it with ``--clients`` concurrent clients (one asyncio task each, sharing one
httpx connection pool) in two phases of ``--seconds`` each:

* **misses** — every request is an architecture the service has not seen
  (``{"space": ..., "seed": N}`` with a fresh ``N``), so each one runs the GHN, recalibrates
  batch norm, scores the network on the validation images and writes a checkpoint. By default
  only seeds whose graph has at most ``--max-flops`` multiply-accumulates are sent (20 M: the
  range the bundled GHN was trained on); ``--max-flops 0`` sends every seed.
* **hits** — the graph documents returned in the first phase are posted again (as graphs, so
  the server validates and hashes them) and answered from the architecture cache.

A client starts no request after the phase's time is up; requests still in flight are waited
for and counted, and requests per second are completed requests over the phase's whole
duration. Any status other than 200/201, and any transport error, is an error: the script
writes its results, then exits 1 if there was one.

Run from the repository root::

    python bench/api_bench.py                 # writes bench/results/api_bench.json
    python bench/api_bench.py --seconds 10    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support.processes import (
    ROOT,
    Child,
    children,
    free_port,
    latency_summary,
    machine_info,
    nas_service_command,
    run_benchmark,
    service_env,
    wait_ready,
)

sys.path.insert(0, str(ROOT))

from nas_service.data import get_task  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

TASK = "fashion-mnist"
GHN_TRAINING_MAX_FLOPS = 20_000_000
"""The bundled GHN's training distribution (``max_flops`` of its training record)."""
STARTUP_SECONDS = 180.0
SEED_OFFSET = 1_000_000
"""Seeds of the miss phase start here; the warm-up request uses the one before."""


@dataclass
class Sample:
    status: int | str  # HTTP status, or the transport exception's name
    seconds: float
    timings: dict[str, float] | None = None  # what the server reports for a fresh score


@dataclass
class Phase:
    name: str
    expected_status: int  # 201: scored now; 200: answered from the cache
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float = 0.0  # this process: the clients share the server's CPUs

    def report(self, seconds: float, clients: int) -> dict[str, Any]:
        duration = self.ended - self.started
        statuses = Counter(str(s.status) for s in self.samples)
        errors = {k: v for k, v in statuses.items() if k not in ("200", "201")}
        ok = [s for s in self.samples if s.status in (200, 201)]
        # Latency of the requests the phase is about: a fresh seed that happens to give a graph
        # already stored is answered from the cache and would flatter the miss phase.
        measured = [s for s in ok if s.status == self.expected_status]
        report: dict[str, Any] = {
            "clients": clients, "seconds": seconds, "duration_s": round(duration, 3),
            "requests": len(self.samples),
            "requests_per_second": round(len(ok) / duration, 3) if duration else None,
            "statuses": dict(sorted(statuses.items())), "errors": sum(errors.values()),
            "errors_by_status": errors, "expected_status": self.expected_status,
            "latency": latency_summary([s.seconds for s in measured]),
            "server_cpu_seconds": (round(self.server_cpu_seconds, 2)
                                   if self.server_cpu_seconds is not None else None),
            "client_cpu_seconds": round(self.client_cpu_seconds, 2),
        }
        if self.server_cpu_seconds is not None and ok:
            report["server_cpu_ms_per_request"] = round(
                self.server_cpu_seconds / len(ok) * 1e3, 2)
        fresh = [s.timings for s in self.samples if s.status == 201 and s.timings]
        if fresh:
            keys = sorted({k for t in fresh for k in t})
            report["server_timings_median_ms"] = {
                k: round(statistics.median(t[k] for t in fresh if k in t) * 1e3, 2)
                for k in keys}
        return report


class MissBodies:
    """Request bodies for architectures the service has not seen: consecutive seeds of
    ``space``, skipping those over ``max_flops`` (sampled here, as the server will)."""

    def __init__(self, space: str, max_flops: int | None, start: int) -> None:
        self.space = get_space(space)
        self.space_name = space
        self.max_flops = max_flops
        self.seeds = itertools.count(start)
        self.skipped = 0
        spec = get_task(TASK)
        self.shape, self.classes = spec.input_shape, spec.num_classes

    def __call__(self) -> dict[str, Any]:
        for seed in self.seeds:
            if (self.max_flops is None
                    or self.space.sample(seed, self.shape, self.classes).flops <= self.max_flops):
                return {"space": self.space_name, "seed": seed, "task": TASK}
            self.skipped += 1
        raise AssertionError("itertools.count is endless")


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Sample, Any]:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/architectures", json=body)
    except httpx.HTTPError as e:
        return Sample(type(e).__name__, time.perf_counter() - started), None
    seconds = time.perf_counter() - started
    payload = response.json() if response.headers.get("content-type", "").endswith("json") \
        else response.text
    timings = payload.get("timings") if response.status_code == 201 else None
    return Sample(response.status_code, seconds, timings), payload


async def _run_phase(client: httpx.AsyncClient, phase: Phase, next_body: Callable[[], dict],
                     clients: int, seconds: float, server: Child,
                     on_created: Callable[[Any], None] | None = None) -> None:
    async def one_client() -> None:
        while time.monotonic() < deadline:
            sample, payload = await _post(client, next_body())
            phase.samples.append(sample)
            if sample.status == 201 and on_created is not None:
                on_created(payload)
            elif sample.status not in (200, 201) and len(phase.samples) < 1000:
                print(f"  {phase.name}: {sample.status} {str(payload)[:300]}", file=sys.stderr)

    cpu_before, client_before = server.cpu_seconds(), time.process_time()
    phase.started = time.monotonic()
    deadline = phase.started + seconds
    await asyncio.gather(*(one_client() for _ in range(clients)))
    phase.ended = time.monotonic()
    cpu_after = server.cpu_seconds()
    phase.client_cpu_seconds = time.process_time() - client_before
    if cpu_before is not None and cpu_after is not None:
        phase.server_cpu_seconds = cpu_after - cpu_before


async def _drive(base_url: str, args: argparse.Namespace, server: Child) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    max_flops = args.max_flops or None
    async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout,
                                 limits=limits) as client:
        ghn = (await client.get("/v1/hypernetworks")).json()
        # The first score loads the task's data into the server: not part of either phase.
        misses_bodies = MissBodies(args.space, max_flops, SEED_OFFSET)
        warm_body = misses_bodies()
        warm, payload = await _post(client, warm_body)
        if warm.status != 201:
            raise RuntimeError(f"the warm-up request failed: {warm.status} {payload}")
        print(f"warm-up: {warm.seconds:.2f} s", flush=True)

        scored: list[dict[str, Any]] = []
        misses = Phase("misses", 201)
        print(f"misses: {args.clients} clients, {args.seconds:g} s ...", flush=True)
        await _run_phase(client, misses, misses_bodies, args.clients, args.seconds, server,
                         on_created=lambda p: scored.append(p["graph"]))
        if not scored:
            scored.append(payload["graph"])  # the warm-up's: at least one graph to repeat

        hit_bodies = itertools.cycle([{"graph": g, "task": TASK} for g in scored])
        hits = Phase("hits", 200)
        print(f"hits: {args.clients} clients, {args.seconds:g} s, {len(scored)} graph(s) "
              "repeated ...", flush=True)
        await _run_phase(client, hits, lambda: next(hit_bodies), args.clients, args.seconds,
                         server)
    return {
        "ghn": {k: ghn[0].get(k) for k in ("task", "version", "device", "score")} if ghn
        else None,
        "warmup_s": round(warm.seconds, 3),
        "score": payload["score"],  # the warm-up's: which score, on how many images
        "misses": {**misses.report(args.seconds, args.clients), "space": args.space,
                   "max_flops": max_flops, "seeds_skipped_over_max_flops": misses_bodies.skipped},
        "hits": {**hits.report(args.seconds, args.clients), "distinct_graphs": len(scored)},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="nas-api-bench-"))
    nas: dict[str, str] = {"NAS_WORKER_POLL_SECONDS": "60"}  # the idle worker stays quiet
    if args.eval_images is not None:
        nas["NAS_EVAL_IMAGES"] = str(args.eval_images)
    env = service_env(data_dir, threads=args.threads, **nas)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    before = machine_info()
    try:
        with children() as started:
            server = Child("nas-service serve", nas_service_command(
                "serve", "--port", str(port), "--log-level", "warning"), env,
                data_dir / "server.log")
            started.append(server)
            ready = wait_ready(base_url, server, STARTUP_SECONDS)
            print(f"server ready in {ready:.1f} s (pid {server.pid}, data in {data_dir})",
                  flush=True)
            results = asyncio.run(_drive(base_url, args, server))
            server.check_alive()
            if "Traceback" in server.log_tail(10_000):
                results["server_log_tracebacks"] = server.log_tail(200)
    finally:
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "benchmark": "api",
        **before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "server": {"command": "nas-service serve (uvicorn, in-process worker idle)",
                   "database": "sqlite (temporary data folder)",
                   "torch_threads": args.threads,
                   "eval_images": args.eval_images, "startup_s": round(ready, 2)},
        "statistic": "latency percentiles over successful requests (nearest rank)",
        **results,
    }


def _print_summary(report: dict[str, Any]) -> None:
    print(f"torch {report['torch']}, {report['cpu_count']} CPUs, server torch threads "
          f"{report['server']['torch_threads']}, load {report['load_average']} -> "
          f"{report['load_average_after']}")
    for name in ("misses", "hits"):
        r = report[name]
        lat = r["latency"] or {}
        print(f"{name:6s}  {r['requests_per_second']} req/s  p50 {lat.get('p50_ms')} ms  "
              f"p90 {lat.get('p90_ms')} ms  p99 {lat.get('p99_ms')} ms  max {lat.get('max_ms')} ms"
              f"  requests {r['requests']}  errors {r['errors']} {r['errors_by_status'] or ''}")
    if "server_timings_median_ms" in report["misses"]:
        print(f"server timings of a miss (median ms): {report['misses']['server_timings_median_ms']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase (default: 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--space", default="cells", choices=["cells", "macro"],
                        help="search space of the miss phase's architectures (default: cells)")
    parser.add_argument("--max-flops", type=int, default=GHN_TRAINING_MAX_FLOPS,
                        help="only send architectures with at most this many multiply-"
                             "accumulates; 0: any (default: %(default)s, the GHN's training "
                             "range)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="OMP_NUM_THREADS of the server (default: the CPU count)")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="NAS_EVAL_IMAGES of the server (default: unset, the service's "
                             "default of 1,000 validation images)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="per request, seconds (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/api_bench.json")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    report = run_benchmark(lambda: run(args), _print_summary, args.output)
    if report is None:
        return 130
    errors = report["misses"]["errors"] + report["hits"]["errors"]
    if errors:
        print(f"{errors} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
