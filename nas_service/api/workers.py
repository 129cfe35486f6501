"""``serve``'s own search worker: in a child process (:class:`WorkerProcess`, the default) or in
a thread of the API process (:class:`WorkerThread`, ``NAS_WORKER_PROCESS=false``).

Both run a :class:`nas_service.search.Worker` on the API's database, with a scorer of the API's
GHN and budget, at a lower CPU priority than the API's requests (:data:`WORKER_NICENESS`).

In a child process, which is the default, nothing the worker does can take the API with it:

- **A batch stuck in scoring is recovered from.** The worker's watchdog fails the batch and
  gives its job back (:mod:`nas_service.search.worker`); a thread stuck in native code cannot be
  stopped, so the child exits (status 3, as ``nas-service worker`` does) and
  :class:`WorkerProcess` starts a fresh one, which claims the job again and goes on with it.
  In a thread, the worker stays stuck until ``serve`` restarts (``/readyz`` says ``stuck``).
- **A crash is recovered from.** A child that dies (killed by the kernel for memory, a fault in
  a native library) is started again; its job's lease expires and the queue hands it out again.
  The API process keeps answering throughout.
- **The interpreter lock is the API's.** The worker's Python (building networks, the scoring
  loops) runs in another interpreter, never between a request's steps (torch's own work releases
  the lock in a thread too: ``bench/latency_bench.py --worker-thread`` measures no difference
  beyond its noise).

What crosses the process boundary: the scorer's configuration
(:class:`~nas_service.api.scoring_processes.ScoringProcessConfig`) and the settings, once; a
``wake`` when a job is queued; and the worker's hook calls back (candidates recorded, promotions,
heartbeats, jobs finished), which the API's ``/metrics`` counts as its own worker's.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import Any, Protocol

from nas_service.runtime import release_freed_memory, retain_freed_memory
from nas_service.search import EXIT_WORKER_STUCK, Worker, WorkerHooks
from nas_service.settings import Settings

from .scoring_processes import ScoringProcessConfig

log = logging.getLogger("nas_service.api.worker")

WORKER_NICENESS = 10
"""How much lower the worker's CPU priority is than the API's (Linux nice values): a search uses
the cores the API leaves idle, and a request does not wait for it."""
START_SECONDS = 300.0
"""How long a worker process may take to import torch and load the GHN."""
EXIT_SECONDS = 3.0
"""How long a worker process gets past the shutdown grace period before it is killed."""
POLL_SECONDS = 0.2
RESTART_BACKOFF_SECONDS = 10.0
"""A worker process that died within this long of starting is started again only after this
long, so that one failing the same way every time (a GHN file gone) does not spin."""


class ServiceWorker(Protocol):
    """What the API does with its worker, wherever it runs."""

    def start(self) -> None: ...

    def wake(self) -> None:
        """A job or task was queued: claim now rather than at the next poll."""

    def stop(self) -> None:
        """Ask the worker to stop after its batch; returns at once (safe in a signal handler)."""

    def shut_down(self, grace_seconds: float) -> None:
        """Stop, waiting at most ``grace_seconds`` for the batch (then its job is released)."""

    @property
    def health(self) -> str:
        """``ok``, or what is wrong (``/readyz``'s ``worker`` check)."""


def lower_this_threads_priority() -> None:
    """Lowers the calling thread's CPU priority by :data:`WORKER_NICENESS`; the threads it starts
    afterwards (torch's OpenMP team among them) inherit it (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS))
    except (AttributeError, OSError) as e:  # not Linux, or not permitted: run at equal priority
        log.info("cannot lower the worker's priority: %s", e)


# ---- in a thread of the API process -------------------------------------------------------------


class WorkerThread:
    """The worker in a daemon thread of the API process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=self._run, name="nas-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        self.worker.stop()

    def shut_down(self, grace_seconds: float) -> None:
        """A batch still running after ``grace_seconds`` has its job released from here, so
        another worker claims it at once instead of waiting for the lease to expire; the thread
        (a daemon) ends with the process."""
        self.worker.stop()
        if not self.thread.is_alive():
            return
        self.thread.join(grace_seconds)
        if self.thread.is_alive():
            log.warning("the worker did not stop in %g s: releasing its job", grace_seconds)
            self.worker.release_current_job()

    @property
    def health(self) -> str:
        if self.worker.stuck.is_set():
            return "stuck"
        return "ok" if self.thread.is_alive() else "stopped"

    def _run(self) -> None:
        lower_this_threads_priority()
        self.worker.run()


# ---- in a child process ---------------------------------------------------------------------------

WorkerTarget = Callable[[ScoringProcessConfig, Settings, Connection, int], None]


@dataclass(frozen=True)
class _HookCall:
    name: str  # a field of WorkerHooks
    args: tuple[Any, ...]


class WorkerProcess:
    """The worker in a child process (``spawn``), started again whenever it exits unasked.

    ``hooks`` are called in the API process as the child's worker calls its own;
    ``on_restart(reason)`` each time a child is started again (``stuck``, ``crashed`` or
    ``start_failed``). ``target`` is the child's body (tests give one that gets stuck)."""

    def __init__(self, config: ScoringProcessConfig, settings: Settings, *,
                 hooks: WorkerHooks | None = None,
                 on_restart: Callable[[str], None] | None = None,
                 target: WorkerTarget | None = None) -> None:
        self.config = config
        self.settings = settings
        self.hooks = hooks or WorkerHooks()
        self._on_restart = on_restart or (lambda _reason: None)
        self._target = target or serve_worker
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._send_lock = threading.Lock()
        self._connection: Connection | None = None
        self._process: Any = None
        self._health = "starting"
        self.restarts = 0
        self.pid: int | None = None
        """The running child's process id, once it is ready."""
        self._thread = threading.Thread(target=self._supervise, name="nas-worker-supervisor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._send(("wake",))

    def stop(self) -> None:
        # Only an event: the supervisor tells the child (a signal handler must not wait for
        # the lock a request's wake() may hold).
        self._stopping.set()

    def shut_down(self, grace_seconds: float) -> None:
        """The child finishes its batch and releases its job (at most ``grace_seconds``, then
        the job is released anyway, as ``nas-service worker`` does on SIGTERM); one that has not
        exited :data:`EXIT_SECONDS` later is killed."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(grace_seconds + 2 * EXIT_SECONDS + 2 * POLL_SECONDS)
        process = self._process
        if process is not None and process.is_alive():  # the supervisor did not end in time
            process.kill()
            process.join(EXIT_SECONDS)
        self._health = "stopped"

    @property
    def health(self) -> str:
        return self._health

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            if self._connection is None:
                return
            with contextlib.suppress(OSError, ValueError):
                self._connection.send(message)

    # ---- the supervisor thread ------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            reason, detail = self._run_child()
            if self._stopping.is_set():
                break
            self.restarts += 1
            log.error("the worker process %s (%s): starting another", detail, reason)
            self._on_restart(reason)
            self._health = f"restarting: the last worker process {detail}"
            if reason != "stuck" and time.monotonic() - started < RESTART_BACKOFF_SECONDS:
                self._stopping.wait(RESTART_BACKOFF_SECONDS)
        self._health = "stopped"

    def _run_child(self) -> tuple[str, str]:
        """Runs one child until it exits; returns why (``stopped``, ``stuck``, ``crashed``,
        ``start_failed``) and a sentence saying so."""
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=self._target, name="nas-worker",
            args=(self.config, self.settings, child_end, logging.getLogger().getEffectiveLevel()),
            daemon=True)
        process.start()
        child_end.close()
        with self._send_lock:
            self._process, self._connection = process, parent_end
        start_deadline = time.monotonic() + START_SECONDS
        stop_deadline: float | None = None
        start_failure: str | None = None
        ready, pipe_open = False, True
        try:
            while True:
                if not pipe_open:  # the child is exiting: wait for it rather than the pipe
                    process.join(POLL_SECONDS)
                try:
                    while pipe_open and parent_end.poll(POLL_SECONDS):
                        message = parent_end.recv()
                        if message[0] == "ready":
                            ready = True
                            self.pid = process.pid
                            self._health = "ok"
                            log.info("worker process ready (pid %d, worker %s)", process.pid,
                                     message[1])
                        elif message[0] == "hook":
                            self._call_hook(message[1])
                        elif message[0] == "failed":
                            start_failure = message[1]
                except (OSError, EOFError):
                    pipe_open = False
                if not process.is_alive():
                    break
                now = time.monotonic()
                if self._stopping.is_set() and stop_deadline is None:
                    self._send(("stop",))
                    stop_deadline = now + self.settings.shutdown_grace_seconds + EXIT_SECONDS
                if ((stop_deadline is not None and now > stop_deadline)
                        or (not ready and now > start_deadline)):
                    process.kill()
                    process.join(EXIT_SECONDS)
                    if not ready and stop_deadline is None:
                        start_failure = f"did not start in {START_SECONDS:g} s"
                    break
        finally:
            with self._send_lock:
                self._connection = None
            parent_end.close()
            process.join(EXIT_SECONDS)
        code = process.exitcode
        if self._stopping.is_set():
            return "stopped", f"exited with status {code}"
        if start_failure is not None:
            return "start_failed", f"could not start: {start_failure}"
        if code == EXIT_WORKER_STUCK:
            return "stuck", "was stuck in scoring (its job went back to the queue)"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return "crashed", f"was killed by {signal.Signals(-code).name}"
        return "crashed", f"exited with status {code}"

    def _call_hook(self, call: _HookCall) -> None:
        try:
            getattr(self.hooks, call.name)(*call.args)
        except Exception:  # a metric that fails must not stop the supervision
            log.exception("worker hook %s failed", call.name)


# ---- the child ------------------------------------------------------------------------------------


def serve_worker(config: ScoringProcessConfig, settings: Settings, connection: Connection,
                 log_level: int) -> None:
    """A worker process's body: load the scorer, run the worker until the API says stop (or its
    end of the pipe closes, or SIGTERM), then exit; exit :data:`EXIT_WORKER_STUCK` at once when a
    batch gets stuck."""
    lower_this_threads_priority()  # before torch starts any thread
    # Ctrl-C in a terminal reaches the whole process group: the API decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nas_service.db import make_engine
    from nas_service.search import CheckpointStore

    send_lock = threading.Lock()

    def send(*message: Any) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):
            connection.send(message)

    def forward(name: str) -> Callable[..., None]:
        return lambda *args: send("hook", _HookCall(name, args))

    # The API and its scoring processes share this machine: between batches the worker holds
    # its base memory, not the peak of every candidate it scored (nas_service.runtime).
    retain_freed_memory()
    hooks = WorkerHooks(**{f.name: forward(f.name) for f in fields(WorkerHooks)
                           if f.name != "batch_done"},
                        batch_done=lambda *_: release_freed_memory())
    try:
        scorer = config.load_scorer()
        engine = make_engine(config.database_url)
        worker = Worker.from_settings(settings, engine, scorer,
                                      CheckpointStore(config.checkpoint_dir), hooks=hooks)
    except Exception as e:  # noqa: BLE001 - reported to the API, which starts another later
        send("failed", f"{type(e).__name__}: {e}")
        return
    sigterm = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: sigterm.set())

    def should_stop() -> bool:
        """The API's messages for up to a poll: ``True`` once it says stop or is gone."""
        try:
            if not connection.poll(POLL_SECONDS):
                return sigterm.is_set()
            message = connection.recv()
        except (EOFError, OSError):  # the API process is gone
            return True
        if message is None or message[0] == "stop":
            return True
        if message[0] == "wake":
            worker.wake()
        return sigterm.is_set()

    send("ready", worker.worker_id)
    ended = worker.run_until_stopped(should_stop, settings.shutdown_grace_seconds)
    if ended != "stopped":  # a thread still in torch cannot be joined, nor the interpreter end
        logging.shutdown()
        os._exit(EXIT_WORKER_STUCK if ended == "stuck" else 0)
    engine.dispose()
