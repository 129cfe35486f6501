"""The FastAPI application: :func:`create_app`.

Built eagerly: ``create_app`` opens the database engine, refuses a database whose schema is not
this version's (:class:`nas_service.db.SchemaError`), and loads the GHN (raises
:class:`nas_service.ghn.checkpoint.CheckpointError` when the checkpoint is missing), so a
misconfigured service fails at start-up, not on its first request. The lifespan starts and
stops the scoring processes and ``serve``'s worker (:mod:`nas_service.api.workers`), and warms
the task data; its end is bounded (``NAS_SHUTDOWN_GRACE_SECONDS``, see :func:`_shut_down`).

Layers, outermost first: Starlette's error middleware (the catch-all 500 problem), request
metrics, the body-size limit and read deadline, strict JSON bodies, then FastAPI's routing with
its exception handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI

from nas_service.data import list_tasks
from nas_service.db import make_engine, migrate
from nas_service.graph import DEFAULT_LIMITS, GraphLimits
from nas_service.scoring import ArchitectureScorer, ScoringBudget
from nas_service.search import CheckpointStore, Worker, WorkerHooks
from nas_service.settings import Settings, get_settings
from nas_service.version import __version__

from . import dashboard
from .auth import APIKeys, require_api_key
from .deps import ServiceState
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import BodySizeLimit, RequestMetrics, StrictJSONBody
from .openapi import finish_openapi
from .routers import architectures, candidates, catalog, health, search_jobs, tasks
from .scoring_processes import ScoringPool, ScoringProcessConfig
from .workers import ServiceWorker, WorkerProcess, WorkerTarget, WorkerThread

log = logging.getLogger("nas_service.api")

DESCRIPTION = """\
Score neural architectures with a graph hypernetwork (GHN) and search spaces of them.

`POST /v1/architectures` predicts an architecture's weights in one GHN forward pass and reports
its accuracy on the task's validation split; `POST /v1/search-jobs` queues a search whose
candidates workers score. Errors are RFC 9457 problems (`application/problem+json`). When API
keys are configured, `/v1` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""


def graph_limits(settings: Settings) -> GraphLimits:
    """The graph layer's limits, tightened by the service's settings."""
    d = DEFAULT_LIMITS
    return replace(d, max_nodes=min(settings.max_graph_nodes, d.max_nodes),
                   max_parameters=min(settings.max_graph_parameters, d.max_parameters),
                   max_parameters_per_node=min(settings.max_graph_parameters,
                                               d.max_parameters_per_node),
                   max_flops=min(settings.max_graph_flops, d.max_flops))


def scoring_budget(settings: Settings) -> ScoringBudget:
    return ScoringBudget(max_bytes=settings.max_scoring_bytes,
                         max_macs=settings.max_scoring_macs)


def load_scorer(settings: Settings) -> ArchitectureScorer:
    """The GHN named by the settings (``ghn_path``, else the bundled one), ready to score."""
    return ArchitectureScorer.load(
        settings.ghn_path, device=settings.device, eval_images=settings.eval_images,
        recalibration_batches=settings.recalibration_batches,
        recalibration_batch_size=settings.recalibration_batch_size,
        budget=scoring_budget(settings), adapted_dir=settings.adapted_ghn_dir,
        tasks_dir=settings.tasks_dir)


def create_app(settings: Settings | None = None, *, scorer: ArchitectureScorer | None = None,
               run_worker: bool | None = None) -> FastAPI:
    """The service's ASGI app.

    ``scorer`` replaces the GHN the settings name (tests share one); ``run_worker`` overrides
    ``settings.worker_in_process`` (the worker runs while the app's lifespan does).

    The API's cache misses are scored in ``settings.scoring_processes`` child processes
    (:class:`~nas_service.api.scoring_processes.ScoringPool`, started with the lifespan), or,
    with none, in a thread of this process with a scorer of its own (:meth:`ArchitectureScorer.
    sibling`: a GHN and a lock each, the task data shared). ``serve``'s worker has its own
    scorer too, under the same budget, in a child process (``settings.worker_process``) or a
    thread, at a lower CPU priority: a search never holds a lock an API request waits for, and
    the cores go to the API first.
    """
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    try:
        migrate.check_schema(engine)
        scorer = scorer or load_scorer(settings)
        tasks.register_stored_tasks(engine)
    except Exception:
        engine.dispose()
        raise
    metrics = ServiceMetrics()
    budget = scoring_budget(settings)
    state = ServiceState(settings=settings, engine=engine, scorer=scorer.sibling(budget),
                         store=CheckpointStore(settings.checkpoint_dir), metrics=metrics,
                         api_keys=APIKeys(settings.api_keys),
                         graph_limits=graph_limits(settings))
    if settings.worker_in_process if run_worker is None else run_worker:
        state.worker = build_worker(state, scorer.sibling(budget))
    if settings.scoring_processes > 0:
        state.scoring_pool = ScoringPool(
            ScoringProcessConfig.of(state.scorer, database_url=settings.database_url,
                                    checkpoint_dir=str(settings.checkpoint_dir),
                                    threads=settings.scoring_threads),
            processes=settings.scoring_processes, max_waiting=settings.scoring_queue,
            batch_size=settings.scoring_batch_size,
            timeout_seconds=settings.scoring_timeout_seconds,
            on_batch=metrics.scoring_batches.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _warm_up(state)  # admission control estimates from the task's images here too
        if state.scoring_pool is not None:
            state.scoring_pool.start()
        if state.worker is not None:
            state.worker.start()
        try:
            yield
        finally:
            # In a thread: the event loop still sends the answers of requests that the end of
            # the grace period cancelled (503) while the worker and the scoring processes stop.
            await anyio.to_thread.run_sync(_shut_down, state)

    app = FastAPI(title="nas-service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan,
                  # operationId = the route function's name: short, stable, and what links name.
                  generate_unique_id_function=lambda route: route.name)
    app.state.service = state
    app.state.unhandled_errors = metrics.unhandled_errors
    install_error_handlers(app)
    app.add_middleware(StrictJSONBody)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       read_seconds=settings.request_read_seconds,
                       upload_limits={tasks.UPLOAD_PATH: settings.max_upload_bytes})
    app.add_middleware(RequestMetrics, metrics=metrics)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for module in (architectures, search_jobs, candidates, tasks, catalog):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(dashboard.router)  # the web dashboard, at /
    _finish_openapi_on_first_use(app, state)
    return app


def build_worker(state: ServiceState, scorer: ArchitectureScorer, *,
                 target: WorkerTarget | None = None) -> ServiceWorker:
    """``serve``'s worker (not started), on ``state``'s database and metrics, scoring with
    ``scorer`` (a thread) or a scorer built as ``scorer`` was (a process, whose body ``target``
    replaces in tests)."""
    settings, metrics = state.settings, state.metrics
    hooks = _metrics_hooks(metrics)
    if not settings.worker_process:
        return WorkerThread(Worker.from_settings(settings, state.engine, scorer, state.store,
                                                 hooks=hooks))
    return WorkerProcess(
        ScoringProcessConfig.of(scorer, database_url=settings.database_url,
                                checkpoint_dir=str(settings.checkpoint_dir)),
        settings, hooks=hooks, target=target,
        on_restart=lambda reason: metrics.worker_restarts.inc(reason=reason))


def _shut_down(state: ServiceState) -> None:
    """The end of the lifespan (after the server stopped accepting and its in-flight requests
    finished or were cancelled): bounded by ``shutdown_grace_seconds`` for the worker. The
    worker stops between two batches and releases its job; a batch still running at the end of
    the grace period has its job released, so another worker claims it at once instead of
    waiting for the lease to expire (:meth:`~nas_service.api.workers.ServiceWorker.shut_down`).
    The scoring processes are stopped, killed if they do not exit."""
    try:
        if state.worker is not None:
            state.worker.shut_down(state.settings.shutdown_grace_seconds)
    finally:
        if state.scoring_pool is not None:
            state.scoring_pool.close()
        state.engine.dispose()


def _finish_openapi_on_first_use(app: FastAPI, state: ServiceState) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            scorer = state.scorer
            scored = [t for t in list_tasks() if scorer is not None and scorer.supports(t)]
            app.openapi_schema = finish_openapi(
                generate(), api_keys=state.api_keys.enabled,
                max_search_candidates=state.settings.max_search_candidates, scored_tasks=scored)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _metrics_hooks(metrics: ServiceMetrics) -> WorkerHooks:
    def heartbeat(held: bool) -> None:
        metrics.heartbeats.inc(held=str(held).lower())
        if held:
            metrics.last_heartbeat.set(time.time())

    return WorkerHooks(candidate_recorded=lambda status: metrics.candidates.inc(status=status),
                       candidate_promoted=lambda rung: metrics.promotions.inc(rung=str(rung)),
                       heartbeat=heartbeat,
                       job_finished=lambda outcome: metrics.jobs_finished.inc(outcome=outcome))


def _warm_up(state: ServiceState) -> None:
    """Decodes the GHN's task data in the background, so the first request does not pay."""
    scorer = state.scorer
    if scorer is None or scorer.task is None:
        return

    def load() -> None:
        try:
            scorer.task_tensors(scorer.task or "")
        except Exception as e:  # noqa: BLE001 - scoring requests will report it
            log.warning("cannot load the data of task %r: %s", scorer.task, e)

    threading.Thread(target=load, name="nas-warm-up", daemon=True).start()
