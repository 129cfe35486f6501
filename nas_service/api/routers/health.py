"""Probes and metrics, outside ``/v1`` and never behind an API key: ``/healthz`` (the process
answers), ``/readyz`` (database reachable, schema current, GHN loaded) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from nas_service.db import SchemaError, listings, migrate, read_session

from ..deps import ServiceDep
from ..errors import PROBLEM_MEDIA_TYPE, Problem
from ..metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """200 while the process serves requests; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready (problem+json, with checks)",
                                        "content": {PROBLEM_MEDIA_TYPE: {}}}})
def readyz(service: ServiceDep) -> Any:
    """200 when the database answers, its schema is this version's, a GHN is loaded and, with
    scoring processes, one of them is ready."""
    checks: dict[str, str] = {}
    try:
        migrate.check_schema(service.engine)
        checks["database"] = "ok"
        checks["schema"] = "ok"
    except SchemaError as e:
        checks["database"] = "ok"
        checks["schema"] = str(e)
    except Exception as e:  # noqa: BLE001 - any failure to reach the database is "not ready"
        checks["database"] = f"unreachable: {type(e).__name__}"
        checks["schema"] = "unknown"
    checks["ghn"] = "ok" if service.scorer is not None else "not loaded"
    if service.scoring_pool is not None:
        checks["scoring"] = "ok" if service.scoring_pool.ready else "starting"
    if service.worker is not None:
        checks["worker"] = service.worker.health
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return Problem(503, f"not ready: {failing}", slug="not-ready", title="Not ready",
                   extra={"checks": checks}).response("/readyz")


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(service: ServiceDep) -> PlainTextResponse:
    """Prometheus text format: request latency per route, candidates recorded, queue depth,
    jobs per status, worker heartbeats."""
    m = service.metrics
    try:
        with read_session(service.engine) as session:
            depth = listings.queue_depth(session)
            counts = listings.job_counts(session)
        m.queue_depth.set(depth)
        for status, count in counts.items():
            m.jobs.set(count, status=status.value)
        m.database_up.set(1)
    except Exception:  # noqa: BLE001 - the scrape still answers, saying the database is down
        m.database_up.set(0)
    return PlainTextResponse(m.render(), media_type=CONTENT_TYPE)
