"""The API's latency budget while a search runs in the same process: a real ``nas-service serve``
(the embedded default: SQLite, the bundled GHN, its own worker), ``--clients`` concurrent
clients reading and repeating (weights ``--mix``) beside ``--miss-clients`` clients scoring new
networks, first with the worker idle, then while it runs a search job.

Each client loops (closed loop: its next request once the last one answered), picking at random
(seeded):

* **read** — ``GET`` of a stored architecture, of the search job, or a page of its candidates;
* **hit** — ``POST /v1/architectures`` of a graph already scored (validated, hashed, answered
  from the cache);
* **miss** — ``POST /v1/architectures`` of a small network not seen before (``space``/``seed``
  of the cells space with at most 20 M MACs, the bundled GHN's training range): the GHN, the
  recalibration and the evaluation on 1,000 validation images run for it.

Misses have clients of their own because a scoring process scores one batch at a time: in a
closed loop where any client may send a miss, every client ends up waiting in the miss queue
(a miss costs seconds, a read milliseconds), so the miss latency measured would be the queue's
length times the scoring time, whatever the search does. With ``--miss-clients 1`` it is the
time one new small network takes while reads, hits and the search run. ``--scoring-processes``
sets ``NAS_SCORING_PROCESSES`` (``0``: misses scored in a thread of the API process, to compare);
``--worker-thread`` runs ``serve``'s worker in a thread of the API process
(``NAS_WORKER_PROCESS=false``) instead of its own child process; ``--short-training`` has the
search rank by short training (a few SGD steps a candidate, backward passes in the worker).

The search job (cells space, random strategy, ``--search-candidates`` candidates, no
constraints) is queued between the two phases; the second phase starts once the worker has
recorded its first candidate, and the job is cancelled at the end. The targets (issue 18): while
a search runs, p99 of reads and hits at most 1 s, of misses at most 3 s.

Each phase also reports the server's peak memory: the proportional set sizes of the API process,
its scoring processes and its worker summed (shared pages once), sampled every 0.25 s, and each
process's part at that moment; the target is 2 GiB at the default limits. After the phases, once
the cancelled search has stopped, it reads what the server holds at rest.

The report says what the machine was doing (load average before and after): numbers taken on a
machine shared with other work are pessimistic.

Run from the repository root::

    python bench/latency_bench.py                 # writes bench/results/latency_bench.json
    python bench/latency_bench.py --seconds 30    # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from support.processes import (
    ROOT,
    Child,
    PeakMemory,
    children,
    free_port,
    latency_summary,
    machine_info,
    mib_by_name,
    nas_service_command,
    run_benchmark,
    service_env,
    tree_memory,
    wait_ready,
)

sys.path.insert(0, str(ROOT))

from support.misses import small_misses  # noqa: E402  (imports nas_service, on ROOT)

TASK = "fashion-mnist"
STARTUP_SECONDS = 180.0
TARGETS_MS = {"read": 1000.0, "hit": 1000.0, "miss": 3000.0}
MEMORY_TARGET_MIB = 2048  # the service's peak memory at the default limits (issue 18)
REST_SECONDS = 3.0
"""How long after the search stopped the memory at rest is read."""
STOP_SECONDS = 600.0
"""How long the cancelled search may take to stop before the memory is read anyway."""


class Corpus:
    """What the clients send: stored ids and graphs to read and repeat, fresh seeds to miss."""

    def __init__(self) -> None:
        self.misses = small_misses()
        self.architecture_ids: list[str] = []
        self.graphs: list[dict[str, Any]] = []
        self.job_id: str | None = None

    def miss_body(self) -> dict[str, Any]:
        seed, _ = next(self.misses)
        return {"space": "cells", "seed": seed, "task": TASK}

    def stored(self, payload: dict[str, Any]) -> None:
        self.architecture_ids.append(payload["id"])
        self.graphs.append(payload["graph"])


async def _request(client: httpx.AsyncClient, kind: str, corpus: Corpus,
                   rng: random.Random) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        if kind == "miss":
            r = await client.post("/v1/architectures", json=corpus.miss_body())
            if r.status_code == 201:
                corpus.stored(r.json())
        elif kind == "hit":
            r = await client.post("/v1/architectures",
                                  json={"graph": rng.choice(corpus.graphs), "task": TASK})
        else:
            choice = rng.random()
            if choice < 0.5 or corpus.job_id is None:
                r = await client.get(f"/v1/architectures/{rng.choice(corpus.architecture_ids)}")
            elif choice < 0.75:
                r = await client.get(f"/v1/search-jobs/{corpus.job_id}")
            else:
                r = await client.get(f"/v1/search-jobs/{corpus.job_id}/candidates",
                                     params={"limit": 20})
        status: int | str = r.status_code
    except httpx.HTTPError as e:
        status = type(e).__name__
    return status, time.perf_counter() - started


async def _phase(client: httpx.AsyncClient, corpus: Corpus, args: argparse.Namespace,
                 name: str, seed: int, server_pid: int) -> dict[str, Any]:
    kinds, weights = zip(*args.mix.items(), strict=True)
    all_kinds = (*kinds, "miss")
    samples: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    deadline = time.monotonic() + args.seconds

    async def one_client(index: int, misses: bool) -> None:
        rng = random.Random(seed * 1000 + index)
        while time.monotonic() < deadline:
            kind = "miss" if misses else rng.choices(kinds, weights)[0]
            status, seconds = await _request(client, kind, corpus, rng)
            statuses[kind][str(status)] += 1
            expected = {"miss": (200, 201), "hit": (200,), "read": (200,)}[kind]
            if status in expected:
                samples[kind].append(seconds)

    started = time.monotonic()
    with PeakMemory(server_pid) as memory:
        await asyncio.gather(
            *(one_client(i, False) for i in range(args.clients)),
            *(one_client(args.clients + i, True) for i in range(args.miss_clients)))
    duration = time.monotonic() - started
    report: dict[str, Any] = {"duration_s": round(duration, 2),
                              "memory": memory.report(_Roles(server_pid))}
    for kind in all_kinds:
        latency = latency_summary(samples[kind])
        report[kind] = {"statuses": dict(statuses[kind]), "latency": latency,
                        "p99_within_target": (latency["p99_ms"] <= TARGETS_MS[kind]
                                              if latency else None)}
    report["errors"] = sum(n for c in statuses.values() for s, n in c.items()
                           if not s.startswith("2"))
    print(f"{name}: " + "  ".join(
        f"{k} p50 {report[k]['latency']['p50_ms'] if report[k]['latency'] else '-'} "
        f"p99 {report[k]['latency']['p99_ms'] if report[k]['latency'] else '-'} ms "
        f"(n={len(samples[k])})" for k in all_kinds) + f"  errors {report['errors']}"
          f"  peak memory {report['memory']['peak_mib']} MiB", flush=True)
    return report


async def _drive(base_url: str, args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    connections = args.clients + args.miss_clients
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    corpus = Corpus()
    async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout,
                                 limits=limits) as client:
        alone = []  # misses with no other client: what the machine gives one miss now
        for _ in range(args.warm_architectures):
            started = time.perf_counter()
            r = await client.post("/v1/architectures", json=corpus.miss_body())
            r.raise_for_status()
            alone.append(time.perf_counter() - started)
            corpus.stored(r.json())
        print(f"{len(corpus.graphs)} architectures stored, "
              f"{latency_summary(alone)['p50_ms'] if alone else '-'} ms each (p50)", flush=True)
        idle = await _phase(client, corpus, args, "worker idle", seed=1, server_pid=server_pid)
        ranking = {"ranking": {"method": "short-training"}} if args.short_training else {}
        job = await client.post("/v1/search-jobs", json={
            "space": "cells", "task": TASK, "strategy": "random", "seed": 7,
            "budget": {"candidates": args.search_candidates}, **ranking})
        job.raise_for_status()
        corpus.job_id = job.json()["id"]
        waited = time.monotonic()
        while (await client.get(f"/v1/search-jobs/{corpus.job_id}")).json()[
                "progress"]["done"] == 0:
            if time.monotonic() - waited > 600:
                raise RuntimeError("the worker recorded no candidate in 600 s")
            await asyncio.sleep(0.5)
        busy = await _phase(client, corpus, args, "search running", seed=2,
                            server_pid=server_pid)
        final = (await client.get(f"/v1/search-jobs/{corpus.job_id}")).json()
        await client.post(f"/v1/search-jobs/{corpus.job_id}/cancel")
        at_rest = await _memory_at_rest(client, corpus.job_id, server_pid)
    return {"miss_alone": latency_summary(alone), "worker_idle": idle, "search_running": busy,
            "memory_at_rest_after_mib": at_rest,
            "search_candidates_recorded": final["progress"]["done"],
            "targets_ms": TARGETS_MS, "memory_target_mib": MEMORY_TARGET_MIB}


async def _memory_at_rest(client: httpx.AsyncClient, job_id: str, server_pid: int
                          ) -> dict[str, Any]:
    """The server's memory once the cancelled search has stopped and nothing is asked of it:
    what it holds on to after the load, each process's part (the API first)."""
    waited = time.monotonic()
    # A cancel reaches the worker at its next heartbeat and ends the job after the batch in
    # flight, which a search ranked by short training can take minutes over.
    while (status := (await client.get(f"/v1/search-jobs/{job_id}")).json()["status"]) in (
            "queued", "running") and time.monotonic() - waited < STOP_SECONDS:
        await asyncio.sleep(0.5)
    await asyncio.sleep(REST_SECONDS)
    sizes = tree_memory(server_pid)
    return {"total": round(sum(sizes.values()) / 2**20),
            "parts": mib_by_name(sizes, _Roles(server_pid)),
            "job": status, "seconds_after_cancel": round(time.monotonic() - waited, 1)}


class _Roles:
    """What each process of the server is: the API (the server itself), its worker (the child
    at a lower CPU priority), its scoring processes, multiprocessing's resource tracker."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.scoring = 0

    def __call__(self, pid: int) -> str:
        if pid == self.server_pid:
            return "api"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        except (OSError, ValueError, IndexError):
            return f"pid {pid}"
        if b"resource_tracker" in command:
            return "resource tracker"
        if nice > 0:
            return "worker"
        self.scoring += 1
        return f"scoring {self.scoring}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="nas-latency-bench-"))
    scoring = {"NAS_SCORING_THREADS": str(args.scoring_threads)} if args.scoring_threads else {}
    env = service_env(data_dir, threads=args.threads, NAS_WORKER_POLL_SECONDS="0.5",
                      NAS_SCORING_PROCESSES=str(args.scoring_processes),
                      NAS_WORKER_PROCESS="false" if args.worker_thread else "true", **scoring)
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
            print(f"server ready in {ready:.1f} s (pid {server.pid})", flush=True)
            results = asyncio.run(_drive(base_url, args, server.pid))
            server.check_alive()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"benchmark": "latency", **before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "server": "nas-service serve (uvicorn, SQLite, bundled GHN, its own worker)",
            "worker": "a thread of the API process" if args.worker_thread
            else "a child process of its own",
            "search_ranking": "short-training" if args.short_training else "ghn",
            "clients": args.clients, "miss_clients": args.miss_clients,
            "scoring_processes": args.scoring_processes,
            "scoring_threads": args.scoring_threads
            or "NAS_SCORING_THREADS default: one fewer than the cores",
            "seconds_per_phase": args.seconds, "mix": args.mix,
            "statistic": "latency percentiles of successful requests (nearest rank)",
            **results}


def _summarise(report: dict[str, Any]) -> None:
    print(f"load average {report['load_average']} -> {report['load_average_after']}, "
          f"{report['cpu_count']} CPUs; search recorded "
          f"{report['search_candidates_recorded']} candidates")
    for kind in (*report["mix"], "miss"):
        r = report["search_running"][kind]
        print(f"  while searching, {kind}: p99 {r['latency']['p99_ms'] if r['latency'] else '-'}"
              f" ms, within target: {r['p99_within_target']}")
    memory = report["search_running"]["memory"]
    print(f"  while searching, peak memory {memory['peak_mib']} MiB "
          f"({memory['parts_at_peak_mib']}), within target "
          f"({MEMORY_TARGET_MIB} MiB): {memory['peak_mib'] <= MEMORY_TARGET_MIB}")
    rest = report["memory_at_rest_after_mib"]
    print(f"  at rest afterwards: {rest['total']} MiB ({rest['parts']})")


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in ("read", "hit"):
            raise argparse.ArgumentTypeError(f"unknown request kind {kind!r}")
        mix[kind] = float(weight)
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="per phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mix", type=_mix, default=_mix("read=0.7,hit=0.3"),
                        help="weights of read and hit (default: %(default)s)")
    parser.add_argument("--miss-clients", type=int, default=1,
                        help="clients that only score new small networks (default: 1)")
    parser.add_argument("--scoring-processes", type=int, default=1,
                        help="NAS_SCORING_PROCESSES of the server: processes scoring misses, 0 "
                             "for a thread of the API process (default: %(default)s)")
    parser.add_argument("--scoring-threads", type=int, default=None,
                        help="NAS_SCORING_THREADS of the server: torch threads of each scoring "
                             "process (default: the server's, one fewer than the cores)")
    parser.add_argument("--warm-architectures", type=int, default=6,
                        help="architectures stored before the phases, to read and repeat")
    parser.add_argument("--search-candidates", type=int, default=5000)
    parser.add_argument("--worker-thread", action="store_true",
                        help="NAS_WORKER_PROCESS=false: serve's worker in a thread of the API "
                             "process rather than a child process")
    parser.add_argument("--short-training", action="store_true",
                        help="the search job ranks by short training (8 SGD steps a candidate "
                             "in the worker) instead of the GHN's score")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench/results/latency_bench.json")
    args = parser.parse_args(argv)
    report = run_benchmark(lambda: run(args), _summarise, args.output)
    return 0 if report is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
