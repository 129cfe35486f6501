"""``nas-service info | db | serve | worker``: this installation, its database and the service.

``serve`` runs the HTTP API with uvicorn, ``worker`` runs search jobs from the database queue,
``db upgrade | current`` manage the schema. A SQLite database migrates itself at start-up;
PostgreSQL is migrated explicitly (``db upgrade``, the container's entry point). The web and
database stack is imported inside the handlers, so ``info`` never pays for it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from nas_service.commands.arguments import AddParser, load_graph
from nas_service.commands.errors import CommandError
from nas_service.commands.output import PROG, graph_counts, print_stderr
from nas_service.version import __version__

# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


def _device() -> str:
    """The device the GHN runs on, by the rule of :func:`nas_service.ghn.checkpoint.resolve_device`
    (``$NAS_DEVICE``, else ``cuda`` when available, else ``cpu``); a bad ``$NAS_DEVICE`` raises
    :class:`CommandError`."""
    from nas_service.ghn.checkpoint import resolve_device

    try:
        return str(resolve_device())
    except (RuntimeError, ValueError):
        raise CommandError(f"NAS_DEVICE={os.environ.get('NAS_DEVICE')!r} is not a torch device "
                           "(use cpu, cuda or cuda:N)") from None


def _example_graph() -> Path | None:
    """``examples/graphs/small_cnn.json`` of a source checkout (or of the working directory)."""
    relative = Path("examples", "graphs", "small_cnn.json")
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / relative).is_file():
            return root / relative
    return None


def add_info(add_parser: AddParser) -> None:
    p = add_parser("info", help="print versions, the device and what this installation has",
                   description="Print the version, torch and its device, the op vocabulary, "
                               "search spaces, tasks and the bundled example graph.")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    import torch

    from nas_service.graph import OP_NAMES

    device = _device()
    origin = "from NAS_DEVICE" if os.environ.get("NAS_DEVICE", "").strip() else (
        "CUDA available" if device == "cuda" else "CUDA not available")
    print(f"{PROG} {__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__}")
    print(f"device       {device} ({origin})")
    print(f"graph ops    {len(OP_NAMES)} in nas-graph/1")

    try:
        import nas_service.spaces as spaces
    except ImportError as e:
        spaces, why = None, str(e)
    else:  # an empty folder imports as a namespace package: require the real entry point
        why = "nas_service.spaces has no get_space()"
    if spaces is None or not hasattr(spaces, "get_space"):
        print(f"spaces       not available ({why})")
    else:
        names = (spaces.list_spaces() if hasattr(spaces, "list_spaces")
                 else sorted(getattr(spaces, "SPACES", {})))
        print(f"spaces       {', '.join(names) if names else '(none listed)'}")

    try:
        from nas_service.data import (
            DATASETS_DIR_ENV,
            DatasetError,
            get_task,
            list_tasks,
            resolve_root,
        )
    except ImportError as e:
        print(f"tasks        not available ({e})")
    else:
        print("tasks")
        for name in list_tasks():
            spec = get_task(name)
            try:
                folder, _ = resolve_root(spec)
                where = f"{folder} ({'present' if folder.is_dir() else 'missing'})"
            except DatasetError:  # no default folder for this task
                where = f"no folder (set {DATASETS_DIR_ENV})"
            shape = "x".join(map(str, spec.input_shape))
            print(f"  {name:<14} {shape:<8} {spec.num_classes:>3} classes  {where}")

    example = _example_graph()
    if example is not None:
        from nas_service.graph import GraphValidationError

        try:
            graph = load_graph(str(example))
        except GraphValidationError as e:
            for problem in e.problems:
                print_stderr(f"{example}: {problem}")
            return 1
        print(f"example      {example}: valid, {graph_counts(graph)}")
        print(graph.summary())
    return 0

# ------------------------------------------------------------------------------------------------
# db upgrade | current
# ------------------------------------------------------------------------------------------------


def add_db(add_parser: AddParser) -> None:
    p = add_parser("db", help="database schema: upgrade, current",
                   description="Manage the service database named by NAS_DATABASE_URL "
                               "(default: a SQLite file under NAS_DATA_DIR).")
    sub = p.add_subparsers(title="db commands", metavar="COMMAND", required=True)
    u = sub.add_parser("upgrade", help="apply migrations up to the newest revision")
    u.add_argument("--url", default=None, help="database URL (default: NAS_DATABASE_URL)")
    u.set_defaults(handler=_db_upgrade)
    c = sub.add_parser("current", help="print the database's revision and the code's")
    c.add_argument("--url", default=None, help="database URL (default: NAS_DATABASE_URL)")
    c.set_defaults(handler=_db_current)


def _database_url(args: argparse.Namespace) -> str:
    from pydantic import ValidationError

    from nas_service.settings import get_settings

    if args.url:
        return args.url
    try:
        return get_settings().database_url
    except ValidationError as e:
        raise CommandError(f"invalid settings: {e}") from None


def _db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.errors import StorageError

    try:
        before, after = migrate.upgrade(_database_url(args))
    except StorageError as e:
        raise CommandError(str(e)) from None
    except SQLAlchemyError as e:
        raise CommandError(f"cannot reach the database: {e.orig or e}") from None
    print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.engine import make_engine

    engine = make_engine(_database_url(args))
    try:
        print(f"database: {migrate.current_revision(engine) or 'not migrated'}")
        print(f"code:     {migrate.head_revision()}")
    except SQLAlchemyError as e:
        raise CommandError(f"cannot reach the database: {e.orig or e}") from None
    finally:
        engine.dispose()
    return 0

# ------------------------------------------------------------------------------------------------
# serve | worker
# ------------------------------------------------------------------------------------------------


def add_serve(add_parser: AddParser) -> None:
    p = add_parser("serve", help="run the HTTP API (and, by default, one worker process)",
                   description="Serve the /v1 API with uvicorn. Settings come from NAS_* "
                               "variables (docs/api.md). A SQLite database is migrated at "
                               "start-up; PostgreSQL must be migrated with `nas-service db "
                               "upgrade` (the container's entry point does).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--no-worker", action="store_true",
                   help="no worker of its own (run `nas-service worker` processes instead)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(handler=_serve)


def add_worker(add_parser: AddParser) -> None:
    p = add_parser("worker", help="run search jobs from the database queue",
                   description="Claim search jobs from NAS_DATABASE_URL and run them with the "
                               "GHN, until SIGTERM or SIGINT (the current job is then released "
                               "to the queue).")
    p.add_argument("--once", action="store_true",
                   help="run at most one job, then exit (at once if none is queued)")
    p.add_argument("--id", default=None, metavar="NAME",
                   help="worker name in the job's lease (default: host:pid:random)")
    p.set_defaults(handler=_worker)


def _service_settings():
    from pydantic import ValidationError

    from nas_service.settings import get_settings

    try:
        return get_settings()
    except ValidationError as e:
        raise CommandError(f"invalid settings: {e}") from None


def _prepare_database(settings) -> None:
    """The embedded default migrates itself: one SQLite file, one machine, nobody else to do
    it. PostgreSQL is migrated explicitly (`nas-service db upgrade`, the container's entry
    point); serve and worker only check its schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.errors import StorageError

    if not settings.is_sqlite:
        return
    try:
        before, after = migrate.upgrade(settings.database_url)
    except (StorageError, SQLAlchemyError) as e:
        raise CommandError(f"cannot migrate {settings.database_url}: {e}") from None
    if before != after:
        print(f"database migrated to revision {after}", file=sys.stderr)


def _startup_errors():
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db.errors import StorageError
    from nas_service.ghn.checkpoint import CheckpointError
    from nas_service.scoring.ranking_head import RankingHeadError

    return (StorageError, CheckpointError, RankingHeadError, SQLAlchemyError)


def _startup_failure(settings, error: Exception) -> CommandError:
    from nas_service.ghn.checkpoint import CheckpointError

    message = str(error)
    if isinstance(error, CheckpointError) and settings.ghn_path is None:
        message += (" (the bundled GHN is missing from this installation: set NAS_GHN_PATH to a "
                    "checkpoint written by `nas-service train-ghn`)")
    return CommandError(message)


def _serve(args: argparse.Namespace) -> int:
    import contextlib
    import logging

    import uvicorn

    from nas_service.api import create_app
    from nas_service.api.connections import http_protocol

    settings = _service_settings()
    _prepare_database(settings)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings, run_worker=False if args.no_worker else None)
    except _startup_errors() as e:
        raise _startup_failure(settings, e) from None
    # SIGTERM: stop accepting, give requests in flight the grace period, then cancel them and
    # run the lifespan's bounded end (worker's job released, scoring processes stopped).
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level,
        http=http_protocol(settings.request_read_seconds),
        timeout_graceful_shutdown=settings.shutdown_grace_seconds))
    handle_exit = server.handle_exit

    def stop_worker_then_exit(sig: int, frame: object) -> None:
        # The worker starts finishing its batch while the requests finish theirs, not after.
        worker = app.state.service.worker
        if worker is not None:
            worker.stop()
        handle_exit(sig, frame)  # type: ignore[arg-type]

    server.handle_exit = stop_worker_then_exit  # type: ignore[method-assign]
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: the port was taken, or the lifespan failed
        raise CommandError(f"the server did not start on {args.host}:{args.port}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from nas_service.api import load_scorer
    from nas_service.db import make_engine, migrate
    from nas_service.search import EXIT_WORKER_STUCK, CheckpointStore, Worker

    settings = _service_settings()
    _prepare_database(settings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(settings.database_url)
    try:
        migrate.check_schema(engine)
        scorer = load_scorer(settings)
    except _startup_errors() as e:
        engine.dispose()
        raise _startup_failure(settings, e) from None
    worker = Worker.from_settings(settings, engine, scorer,
                                  CheckpointStore(settings.checkpoint_dir), worker_id=args.id)
    # SIGTERM (docker stop, systemd) and SIGINT: finish the batch, release the job, exit 0;
    # a batch still running after NAS_SHUTDOWN_GRACE_SECONDS has its job released at once
    # (another worker claims it) and the process exits without waiting for it. A batch stuck in
    # scoring past NAS_SCORING_TIMEOUT_SECONDS (the worker's watchdog gave its job back) exits
    # with status 3: the stuck thread goes with the process, and the supervisor (docker
    # compose's restart policy, systemd) starts a fresh one (Worker.run_until_stopped).
    stop_asked = threading.Event()

    def stop(*_: object) -> None:
        worker.stop()
        stop_asked.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"worker {worker.worker_id} polling {settings.database_url.split('@')[-1]}",
          file=sys.stderr)
    try:
        ended = worker.run_until_stopped(lambda: stop_asked.wait(0.5),
                                         settings.shutdown_grace_seconds, once=args.once)
        if ended == "stuck":
            return EXIT_WORKER_STUCK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.dispose()
    return 0
