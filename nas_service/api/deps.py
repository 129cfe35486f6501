"""Dependencies of the routers, as ``Annotated`` aliases::

    def get_job(job_id: str, session: ReadSessionDep, service: ServiceDep) -> ...

``ReadSessionDep`` is one read-only transaction per request: a sync generator, so FastAPI runs
it, like the sync endpoints that use it, in its thread pool and database calls never block the
event loop. Writes are not a dependency: an endpoint opens ``write_session`` itself, so the
transaction has committed before the response is sent (a client that reads right after a 201 or
202 sees what it created) and a failed commit is an error response, not a lost write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from nas_service.db import read_session
from nas_service.graph import GraphLimits
from nas_service.scoring import ArchitectureScorer
from nas_service.search import CheckpointStore
from nas_service.settings import Settings

from .auth import APIKeys
from .errors import Problem
from .metrics import ServiceMetrics
from .scoring_processes import ScoringPool
from .workers import ServiceWorker


@dataclass
class ServiceState:
    """Everything the routers share, built once by :func:`nas_service.api.create_app`."""

    settings: Settings
    engine: Engine
    scorer: ArchitectureScorer | None
    store: CheckpointStore
    metrics: ServiceMetrics
    api_keys: APIKeys
    graph_limits: GraphLimits
    worker: ServiceWorker | None = None  # serve's own worker, in a child process or a thread
    # Where cache misses are scored: processes of their own (NAS_SCORING_PROCESSES > 0), else
    # one at a time in a thread of this process through ``scoring_limiter``; waiting requests
    # wait in the event loop, not in a thread pool slot (which the database endpoints need).
    scoring_pool: ScoringPool | None = None
    scoring_limiter: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(1))
    waiting_scores: int = 0

    def require_scorer(self) -> ArchitectureScorer:
        if self.scorer is None:
            raise Problem(503, "no hypernetwork is loaded", slug="not-ready",
                          headers={"Retry-After": "30"})
        return self.scorer


def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def _read_session(service: ServiceDep) -> Iterator[Session]:
    with read_session(service.engine) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(_read_session)]
