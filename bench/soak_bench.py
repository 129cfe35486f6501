"""Soak: mixed load on a PostgreSQL deployment for ``--minutes`` (30 by default), with workers
killed and restarted and hostile requests among the honest ones, then invariants checked.

The deployment is the many-machines one on one host: a fresh PostgreSQL database (created from
``$NAS_TEST_POSTGRES_URL``'s server, dropped at the end), ``nas-service serve --no-worker`` and
``--workers`` ``nas-service worker`` processes sharing a checkpoint folder, the bundled GHN, API
keys on. ``--clients`` clients loop over, by weight:

* scoring architectures (``POST /v1/architectures``: small networks of the cells space, new ones
  and repeats), queuing search jobs of ``--job-candidates`` candidates, and cancelling some;
* reads: architectures, jobs, candidate pages (followed by cursor), checkpoints (checked
  against their ETag);
* hostile requests, each of a class the service must refuse with a 4xx problem: malformed and
  non-UTF-8 bodies, duplicate keys, lone surrogates, resource bombs, tampered cursors,
  ambiguous credentials, a connection that stalls in its headers.

Every ``--kill-seconds`` a random worker gets SIGKILL and a new one is started; its job's lease
expires and another worker finishes it. The memory of every process with its descendants (the
API with its scoring processes) is sampled every few seconds, as proportional set sizes.

At the end the load stops, the jobs are given ``--drain-seconds`` to finish, and the report
checks (``invariants``, each ``true`` or a list of what broke it):

* ``no_5xx``: no response of the load had a 5xx status, nor does the API's ``/metrics`` count
  one since the load started (the readiness probes before it get 503 until the API is ready);
* ``acknowledged_writes_readable``: every architecture answered 200/201 reads back with the same
  content hash, and its checkpoint downloads with the acknowledged SHA-256; every job answered
  202 exists;
* ``every_index_once``: each job's candidates have distinct indices inside its budget, and a
  finished ``succeeded`` job has every index (read straight from the database);
* ``no_unexpected_exit``: the API and every worker not killed on purpose are alive;
* ``bounded_memory``: the peak memory of every process with its descendants stays under
  ``--max-rss-gb``;
* ``no_job_left_running``: after the drain no job is ``running`` with an expired lease.

Run from the repository root (PostgreSQL must be running, as for the tests)::

    python bench/soak_bench.py                  # 30 minutes; writes bench/results/soak_bench.json
    python bench/soak_bench.py --minutes 5      # a short look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support.processes import (
    ROOT,
    Child,
    children,
    children_by_parent,
    free_port,
    latency_summary,
    machine_info,
    nas_service_command,
    run_benchmark,
    service_env,
    tree_memory,
    wait_ready,
)

sys.path.insert(0, str(ROOT))

from nas_service.spaces import get_space  # noqa: E402

TASK = "fashion-mnist"
API_KEY = "soak-key-" + "0123456789abcdef"
SMALL_FLOPS = 20_000_000
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STARTUP_SECONDS = 300.0
WEIGHTS = {"score": 0.15, "search": 0.04, "cancel": 0.01, "read": 0.6, "hostile": 0.2}


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(os.environ.get("NAS_TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"nas_soak_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---- the hostile corpus ----------------------------------------------------------------------


def _bomb(kind: str) -> dict[str, Any]:
    inp = {"id": "input", "op": "input", "shape": [1, 28, 28]}
    if kind == "padding":
        body = [{"id": "c", "op": "conv2d", "inputs": ["input"], "out_channels": 8,
                 "kernel_size": [3, 3], "padding": [1000, 1000]}]
    else:
        body = [{"id": "up", "op": "adaptive_avg_pool", "inputs": ["input"],
                 "output_size": [4096, 4096]},
                {"id": "c", "op": "conv2d", "inputs": ["up"], "out_channels": 1,
                 "kernel_size": [3, 3]}]
    return {"format": "nas-graph/1", "nodes": [inp, *body,
            {"id": "gap", "op": "global_avg_pool", "inputs": ["c"]},
            {"id": "fc", "op": "linear", "inputs": ["gap"], "out_features": 10},
            {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]}


def _cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def hostile_requests() -> list[tuple[str, dict[str, Any]]]:
    """``(class, request)``: keyword arguments of ``httpx.AsyncClient.request``."""
    small = get_space("cells").sample(0, (1, 28, 28), 10).to_dict()
    text = json.dumps({"graph": small})
    json_headers = {"content-type": "application/json"}
    out: list[tuple[str, dict[str, Any]]] = [
        ("malformed-json", {"method": "POST", "url": "/v1/architectures", "content": b"{",
                            "headers": json_headers}),
        ("not-utf8", {"method": "POST", "url": "/v1/architectures",
                      "content": text.encode("utf-16"), "headers": json_headers}),
        ("duplicate-keys", {"method": "POST", "url": "/v1/search-jobs",
                            "content": b'{"space": "cells", "seed": 1, "seed": 2, '
                                       b'"budget": {"candidates": 2}}',
                            "headers": json_headers}),
        ("lone-surrogate", {"method": "POST", "url": "/v1/architectures",
                            "content": json.dumps({"graph": {**small, "name": "X"}}).replace(
                                '"X"', '"bad\\ud800"').encode(), "headers": json_headers}),
        ("bomb-padding", {"method": "POST", "url": "/v1/architectures",
                          "json": {"graph": _bomb("padding")}}),
        ("bomb-upsampling", {"method": "POST", "url": "/v1/architectures",
                             "json": {"graph": _bomb("upsampling")}}),
        ("cursor-overflow", {"method": "GET", "url": "/v1/search-jobs",
                             "params": {"cursor": _cursor({"l": "jobs", "k": [
                                 "0001-01-01T00:00:00+14:00", "a" * 32]})}}),
        ("cursor-garbage", {"method": "GET", "url": "/v1/search-jobs",
                            "params": {"cursor": "x" * 500}}),
        ("over-the-limits", {"method": "POST", "url": "/v1/search-jobs",
                             "json": {"space": "cells", "budget": {"candidates": 10**9}}}),
        ("unknown-id", {"method": "GET", "url": "/v1/architectures/" + "f" * 32}),
    ]
    for headers in ([("Authorization", f"Bearer {API_KEY}"), ("X-API-Key", "")],
                    [("Authorization", "Basic eDp5"), ("X-API-Key", API_KEY)],
                    [("X-API-Key", "wrong")]):
        out.append(("ambiguous-credentials", {"method": "GET", "url": "/v1/tasks",
                                               "headers": httpx.Headers(headers)}))
    return out


def stall_in_headers(port: int) -> str:
    """A connection that sends half a request line and waits: the server must close it."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /v1/tasks HTT")
        try:
            data = sock.recv(1024)
        except TimeoutError:
            return "still-open"
    return "408" if data.startswith(b"HTTP/1.1 408") else ("closed" if not data else "other")


# ---- the load ----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the service acknowledged, and what the clients saw."""

    architectures: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """id -> (content hash, checkpoint sha256)"""
    jobs: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_not_refused: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: {
        "score": [], "read": [], "search": []})
    transport_errors: Counter[str] = field(default_factory=Counter)
    seeds: Iterator[int] = field(default_factory=lambda: iter(range(3_000_000, 10**9)))
    graphs: list[dict[str, Any]] = field(default_factory=list)


def _note(ledger: Ledger, kind: str, r: httpx.Response) -> None:
    ledger.statuses[f"{kind}:{r.status_code}"] += 1
    if r.status_code >= 500:
        ledger.server_errors.append(f"{kind} {r.request.method} {r.request.url.path}: "
                                    f"{r.status_code} {r.text[:200]}")


async def _score(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    space = get_space("cells")
    if ledger.graphs and rng.random() < 0.4:
        body: dict[str, Any] = {"graph": rng.choice(ledger.graphs), "task": TASK}
    else:
        seed = next(ledger.seeds)
        while space.sample(seed, (1, 28, 28), 10).flops > SMALL_FLOPS:
            seed = next(ledger.seeds)
        body = {"space": "cells", "seed": seed, "task": TASK}
    started = time.perf_counter()
    r = await client.post("/v1/architectures", json=body)
    _note(ledger, "score", r)
    if r.status_code in (200, 201):
        ledger.latency["score"].append(time.perf_counter() - started)
        a = r.json()
        ledger.architectures[a["id"]] = (a["content_hash"],
                                         a["checkpoint"]["id"] if a["checkpoint"] else None)
        if len(ledger.graphs) < 200:
            ledger.graphs.append(a["graph"])


async def _search(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random,
                  candidates: int) -> None:
    started = time.perf_counter()
    r = await client.post("/v1/search-jobs", json={
        "space": rng.choice(["cells", "macro"]), "task": TASK,
        "strategy": rng.choice(["random", "evolution"]), "seed": rng.randrange(10**6),
        "budget": {"candidates": candidates}, "constraints": {"max_flops": SMALL_FLOPS}},
        headers={"Idempotency-Key": uuid.uuid4().hex})
    _note(ledger, "search", r)
    if r.status_code == 202:
        ledger.latency["search"].append(time.perf_counter() - started)
        ledger.jobs.add(r.json()["id"])


async def _cancel(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    if ledger.jobs:
        r = await client.post(f"/v1/search-jobs/{rng.choice(sorted(ledger.jobs))}/cancel")
        _note(ledger, "cancel", r)


async def _read(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    started = time.perf_counter()
    choice = rng.random()
    if ledger.architectures and choice < 0.35:
        architecture_id = rng.choice(list(ledger.architectures))
        r = await client.get(f"/v1/architectures/{architecture_id}")
    elif ledger.architectures and choice < 0.45:
        architecture_id = rng.choice(list(ledger.architectures))
        r = await client.get(f"/v1/architectures/{architecture_id}/checkpoint")
        if r.status_code == 200:
            etag = r.headers["etag"].strip('"')
            if hashlib.sha256(r.content).hexdigest() != etag:
                ledger.server_errors.append(f"checkpoint {architecture_id} does not match its "
                                            "ETag")
    elif ledger.jobs and choice < 0.75:
        job_id = rng.choice(sorted(ledger.jobs))
        r = await client.get(f"/v1/search-jobs/{job_id}/candidates",
                             params={"limit": 5, "order_by": rng.choice(["score", "index"])})
        if r.status_code == 200 and r.json()["next_cursor"]:
            _note(ledger, "read", r)
            r = await client.get(f"/v1/search-jobs/{job_id}/candidates",
                                 params={"limit": 5, "cursor": r.json()["next_cursor"],
                                         "order_by": r.request.url.params["order_by"]})
    else:
        r = await client.get("/v1/search-jobs", params={"limit": 20})
    _note(ledger, "read", r)
    if r.status_code == 200:
        ledger.latency["read"].append(time.perf_counter() - started)


async def _hostile(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random,
                   corpus: list[tuple[str, dict[str, Any]]], port: int) -> None:
    if rng.random() < 0.03:
        outcome = await asyncio.to_thread(stall_in_headers, port)
        ledger.hostile[f"stall-in-headers:{outcome}"] += 1
        if outcome in ("still-open", "other"):
            ledger.hostile_not_refused.append(f"stall-in-headers: {outcome}")
        return
    name, request = rng.choice(corpus)
    request = dict(request)
    headers = request.pop("headers", None)
    if name == "ambiguous-credentials":
        # Sent on a bare request so that the client's own key header does not join them.
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as bare:
            r = await bare.request(**request, headers=headers)
    else:
        r = await client.request(**request, headers=headers)
    _note(ledger, f"hostile:{name}", r)
    ledger.hostile[f"{name}:{r.status_code}"] += 1
    if not 400 <= r.status_code < 500 or not r.headers.get("content-type", "").startswith(
            "application/problem+json"):
        ledger.hostile_not_refused.append(f"{name}: {r.status_code} {r.text[:200]}")


async def _load(base_url: str, port: int, args: argparse.Namespace, ledger: Ledger) -> None:
    corpus = hostile_requests()
    kinds, weights = zip(*WEIGHTS.items(), strict=True)
    deadline = time.monotonic() + args.minutes * 60
    limits = httpx.Limits(max_connections=args.clients + 4)

    async def one_client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout, limits=limits,
                                     headers={"X-API-Key": API_KEY}) as client:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                try:
                    if kind == "score":
                        await _score(client, ledger, rng)
                    elif kind == "search":
                        await _search(client, ledger, rng, args.job_candidates)
                    elif kind == "cancel":
                        await _cancel(client, ledger, rng)
                    elif kind == "read":
                        await _read(client, ledger, rng)
                    else:
                        await _hostile(client, ledger, rng, corpus, port)
                except httpx.HTTPError as e:
                    ledger.transport_errors[f"{kind}:{type(e).__name__}"] += 1

    await asyncio.gather(*(one_client(i) for i in range(args.clients)))


# ---- processes -----------------------------------------------------------------------------------


class Fleet:
    """The API and the workers, their memory, and the kills."""

    def __init__(self, env: dict[str, str], data_dir: Path, started: list[Child]) -> None:
        self.env, self.data_dir, self.started = env, data_dir, started
        self.workers: list[Child] = []
        self.killed: list[int] = []
        self.peak_rss: dict[str, int] = {}
        self.api: Child | None = None
        self._count = 0

    def start_worker(self) -> Child:
        self._count += 1
        name = f"worker-{self._count}"
        child = Child(name, nas_service_command("worker"), self.env,
                      self.data_dir / f"{name}.log")
        self.started.append(child)
        self.workers.append(child)
        return child

    def kill_one(self, rng: random.Random) -> None:
        alive = [w for w in self.workers if w.alive()]
        if not alive:
            return
        victim = rng.choice(alive)
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait()
        self.killed.append(victim.pid)
        self.workers.remove(victim)
        self.start_worker()

    def sample_memory(self) -> None:
        """Each started process's memory with its descendants' (the API with its scoring
        processes), summed as proportional set sizes so shared pages count once."""
        children = children_by_parent()
        for child in [c for c in self.started if c.alive()]:
            total = sum(tree_memory(child.pid, children).values())
            if total:
                self.peak_rss[child.name] = max(self.peak_rss.get(child.name, 0), total)


async def _supervise(fleet: Fleet, args: argparse.Namespace, stop: asyncio.Event) -> None:
    rng = random.Random(99)
    next_kill = time.monotonic() + args.kill_seconds
    while not stop.is_set():
        fleet.sample_memory()
        if time.monotonic() >= next_kill:
            await asyncio.to_thread(fleet.kill_one, rng)
            next_kill = time.monotonic() + args.kill_seconds
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3.0)


# ---- invariants ----------------------------------------------------------------------------------


def _server_errors(metrics: str) -> dict[str, float]:
    """The API's count of 5xx answers per (method, route, status), from ``/metrics``."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("nas_http_request_duration_seconds_count") and 'status="5' in line:
            labels, _, value = line.rpartition(" ")
            counts[labels] = float(value)
    return counts


async def _check(base_url: str, database_url: str, ledger: Ledger, fleet: Fleet,
                 args: argparse.Namespace, errors_before: dict[str, float]) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    headers = {"X-API-Key": API_KEY}
    unreadable: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=headers) as client:
        for architecture_id, (content_hash, sha256) in ledger.architectures.items():
            r = await client.get(f"/v1/architectures/{architecture_id}")
            if r.status_code != 200 or r.json()["content_hash"] != content_hash:
                unreadable.append(f"architecture {architecture_id}: {r.status_code}")
                continue
            if sha256 is not None:
                c = await client.get(f"/v1/architectures/{architecture_id}/checkpoint")
                if c.status_code != 200 or hashlib.sha256(c.content).hexdigest() != sha256:
                    unreadable.append(f"checkpoint of {architecture_id}: {c.status_code}")
        for job_id in ledger.jobs:
            r = await client.get(f"/v1/search-jobs/{job_id}")
            if r.status_code != 200:
                unreadable.append(f"job {job_id}: {r.status_code}")
        metrics = (await client.get("/metrics")).text
    # From the start of the load: the readiness probes that waited for the API to start were
    # answered 503 "not ready" by design.
    metric_5xx = [f"{labels} {count - errors_before.get(labels, 0):g}"
                  for labels, count in _server_errors(metrics).items()
                  if count > errors_before.get(labels, 0)]

    engine = create_engine(database_url)
    index_problems: list[str] = []
    stuck: list[str] = []
    with engine.connect() as conn:
        jobs = conn.execute(text(
            "SELECT id, status, budget_candidates, lease_expires_at < now() AS expired "
            "FROM search_jobs")).all()
        rows = conn.execute(text('SELECT job_id, "index" FROM candidates')).all()
    engine.dispose()
    by_job: dict[str, list[int]] = {}
    for job_id, index in rows:
        by_job.setdefault(job_id, []).append(index)
    statuses = Counter()
    for job_id, status, budget, expired in jobs:
        statuses[status] += 1
        indices = by_job.get(job_id, [])
        if len(indices) != len(set(indices)) or any(not 0 <= i < budget for i in indices):
            index_problems.append(f"job {job_id}: indices {sorted(indices)}")
        if status == "succeeded" and sorted(indices) != list(range(budget)):
            index_problems.append(f"succeeded job {job_id}: {len(indices)} of {budget} indices")
        if status == "running" and expired:
            stuck.append(job_id)

    alive = {"api": fleet.api is not None and fleet.api.alive(),
             **{w.name: w.alive() for w in fleet.workers}}
    limit = args.max_rss_gb * 1024**3
    over = {name: rss for name, rss in fleet.peak_rss.items() if rss > limit}
    return {
        "no_5xx": _verdict(ledger.server_errors[:20] + metric_5xx),
        "acknowledged_writes_readable": _verdict(unreadable[:20]),
        "every_index_once": _verdict(index_problems[:20]),
        "no_unexpected_exit": _verdict([name for name, up in alive.items() if not up]),
        "bounded_memory": _verdict([f"{name}: {rss / 2**20:.0f} MiB"
                                    for name, rss in over.items()]),
        "no_job_left_running": _verdict(stuck),
        "hostile_all_refused": _verdict(ledger.hostile_not_refused[:20]),
        "_job_statuses": dict(statuses),
    }


def _verdict(problems: list[str]) -> bool | list[str]:
    """``True`` when an invariant holds, else what broke it."""
    return problems or True


async def _drain(base_url: str, ledger: Ledger, seconds: float) -> int:
    """Waits up to ``seconds`` for the acknowledged jobs to finish; returns how many have not."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"X-API-Key": API_KEY}) as client:
        while True:
            open_jobs = 0
            for job_id in ledger.jobs:
                r = await client.get(f"/v1/search-jobs/{job_id}")
                if r.status_code == 200 and r.json()["status"] in ("queued", "running"):
                    open_jobs += 1
            if open_jobs == 0 or time.monotonic() >= deadline:
                return open_jobs
            await asyncio.sleep(5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="nas-soak-"))
    before = machine_info()
    with fresh_postgres_database() as database_url:
        env = service_env(data_dir, threads=args.threads, NAS_DATABASE_URL=database_url,
                          NAS_API_KEYS=API_KEY, NAS_LEASE_SECONDS=str(args.lease_seconds),
                          NAS_HEARTBEAT_SECONDS=str(args.lease_seconds / 3),
                          NAS_WORKER_POLL_SECONDS="1", NAS_REQUEST_READ_SECONDS="5")
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        try:
            with children() as started:
                migrate = Child("db upgrade", nas_service_command("db", "upgrade"), env,
                                data_dir / "migrate.log")
                if migrate.process.wait() != 0:
                    raise RuntimeError(f"migration failed:\n{migrate.log_tail()}")
                fleet = Fleet(env, data_dir, started)
                fleet.api = Child("api", nas_service_command(
                    "serve", "--no-worker", "--port", str(port), "--log-level", "warning"),
                    env, data_dir / "api.log")
                started.append(fleet.api)
                wait_ready(base_url, fleet.api, STARTUP_SECONDS)
                errors_before = _server_errors(httpx.get(f"{base_url}/metrics", timeout=30).text)
                for _ in range(args.workers):
                    fleet.start_worker()
                print(f"API ready (pid {fleet.api.pid}), {args.workers} workers; load for "
                      f"{args.minutes:g} min", flush=True)
                ledger = Ledger()

                async def soak() -> tuple[int, dict[str, Any]]:
                    stop = asyncio.Event()
                    supervisor = asyncio.create_task(_supervise(fleet, args, stop))
                    try:
                        await _load(base_url, port, args, ledger)
                        print(f"load done: {len(ledger.architectures)} architectures, "
                              f"{len(ledger.jobs)} jobs; draining", flush=True)
                        still_open = await _drain(base_url, ledger, args.drain_seconds)
                    finally:
                        stop.set()
                        await supervisor
                    fleet.sample_memory()
                    return still_open, await _check(base_url, database_url, ledger, fleet,
                                                     args, errors_before)

                still_open, invariants = asyncio.run(soak())
                logs = {c.name: c.log_tail(5) for c in started
                        if "Traceback" in c.log_tail(100_000)}
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "benchmark": "soak", **before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "deployment": f"PostgreSQL, nas-service serve --no-worker, {args.workers} workers, "
                      "API keys on",
        "minutes": args.minutes, "clients": args.clients, "weights": WEIGHTS,
        "kill_seconds": args.kill_seconds, "workers_killed": len(fleet.killed),
        "architectures_acknowledged": len(ledger.architectures),
        "jobs_acknowledged": len(ledger.jobs), "jobs_still_open_after_drain": still_open,
        "responses": dict(sorted(ledger.statuses.items())),
        "transport_errors": dict(ledger.transport_errors),
        "hostile": dict(sorted(ledger.hostile.items())),
        "latency": {k: latency_summary(v) for k, v in ledger.latency.items()},
        "peak_rss_mb": {k: round(v / 2**20) for k, v in sorted(fleet.peak_rss.items())},
        "logs_with_tracebacks": logs,
        "invariants": invariants,
        "all_invariants_hold": all(v is True for k, v in invariants.items()
                                   if not k.startswith("_")),
    }


def _summarise(report: dict[str, Any]) -> None:
    print(f"{report['minutes']} min, {report['clients']} clients, load "
          f"{report['load_average']} -> {report['load_average_after']}; "
          f"{report['architectures_acknowledged']} architectures, "
          f"{report['jobs_acknowledged']} jobs, {report['workers_killed']} workers killed")
    print(f"peak RSS (MiB): {report['peak_rss_mb']}")
    print(f"latency: {report['latency']}")
    for name, value in report["invariants"].items():
        print(f"  {name}: {value}")
    print(f"all invariants hold: {report['all_invariants_hold']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job-candidates", type=int, default=6)
    parser.add_argument("--kill-seconds", type=float, default=90.0,
                        help="a worker gets SIGKILL this often")
    parser.add_argument("--lease-seconds", type=float, default=15.0)
    parser.add_argument("--drain-seconds", type=float, default=300.0)
    parser.add_argument("--max-rss-gb", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of each process (default: 1; they share the CPUs)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/soak_bench.json")
    args = parser.parse_args(argv)
    report = run_benchmark(lambda: run(args), _summarise, args.output)
    return 0 if report is not None and report["all_invariants_hold"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
