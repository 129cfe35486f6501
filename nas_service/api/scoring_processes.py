"""Scoring the API's cache misses in processes of their own: :class:`ScoringPool`.

A miss costs seconds of torch work and of Python between the ops (building the network, the
recalibration and evaluation loops). Run in a thread of the API process, that Python competes
for the interpreter lock with every request the API answers (and with a worker thread);
``bench/latency_bench.py`` measured misses waiting tens of seconds behind readers. Here each
miss goes to a child process (``NAS_SCORING_PROCESSES`` of them, started with ``spawn``) that
loaded the GHN once, scores, and stores the result itself (checkpoint file, then the rows, as
:func:`nas_service.search.evaluate_architectures` does): the API process only validates, reads
the stored row back and answers.

Guarantees:

- **Bounded queue.** At most ``max_waiting`` distinct graphs wait or are being scored;
  :meth:`ScoringPool.submit` refuses the next one with :class:`ScoringBusy` (the API answers 503
  with ``Retry-After``) instead of letting latency grow without bound.
- **Identical misses are scored once.** A graph and task already waiting or being scored are
  not queued again: the second caller waits for the first one's result.
- **Batching.** A child takes up to ``batch_size`` waiting graphs of one task at a time and
  predicts their parameters in one GHN forward pass (:meth:`ArchitectureScorer.score`).
- **Crashes are answers.** A child that dies (killed, out of memory) fails the graphs it was
  scoring with :class:`ScoringUnavailable` (503) and is started again for the next batch; an
  allocation that fails inside the child is that graph's ``MemoryError`` (the API's 422).
- **Hangs are answers too.** A child that has not answered a batch within ``timeout_seconds``
  per graph of it (``NAS_SCORING_TIMEOUT_SECONDS``) is killed, the batch fails with
  :class:`ScoringUnavailable` and the child is started again for the next one. Admission
  control bounds what a graph may cost (:mod:`nas_service.scoring.cost`: at most one to two
  minutes of a 2-core CPU), so a child past the timeout is stuck, not slow: a native kernel
  that never returns (oneDNN's channels-last weight gradient once spun forever on two threads,
  :mod:`nas_service.scoring.trainability`), or a process stopped from outside.
- **Bounded shutdown.** :meth:`ScoringPool.close` fails what still waits, asks each child to
  exit, and kills those that do not within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from nas_service.data import DatasetError
from nas_service.ghn import UnsupportedArchitectureError
from nas_service.graph import ArchitectureGraph
from nas_service.runtime import release_freed_memory, retain_freed_memory
from nas_service.scoring import ArchitectureScorer, ScoringBudget, ScoringTooCostly
from nas_service.scoring.cost import is_memory_failure
from nas_service.scoring.protocol import DEFAULT_SCORING_TIMEOUT_SECONDS

log = logging.getLogger("nas_service.api.scoring")

START_SECONDS = 300.0
"""How long a child may take to import torch, load the GHN and the task data."""
EXIT_SECONDS = 3.0
"""How long a child asked to exit gets before it is killed."""
POLL_SECONDS = 0.2
"""How often a waiting dispatcher checks that its child is still alive."""
RESTART_BACKOFF_SECONDS = 10.0
"""After a child failed to start, misses are refused at once for this long instead of each
paying for another start that fails the same way (a GHN file that went missing)."""


class ScoringBusy(Exception):
    """Too many graphs wait for a scoring process: retry later."""


class ScoringUnavailable(Exception):
    """No scoring process could score this graph (it died, could not start, or the service is
    stopping); retrying later may succeed."""


@dataclass(frozen=True)
class ScoredMiss:
    """What a child made of one graph: the stored architecture's id."""

    architecture_id: str
    created: bool  # scored by this request (False: stored meanwhile, or joined another's)
    seconds: float


@dataclass(frozen=True)
class ScoringProcessConfig:
    """Everything a child needs to build the same scorer as the API's and to store results;
    plain values, so it crosses the ``spawn`` boundary."""

    database_url: str
    checkpoint_dir: str
    ghn_path: str | None
    device: str
    eval_images: int | None
    recalibration_batches: int
    recalibration_batch_size: int
    budget: ScoringBudget
    readout: bool
    base_version: str
    """The API scorer's version before any adapted GHN: the child's must be the same."""
    adapted_dir: str | None = None
    """Where the GHN adapted to registered tasks is served, and those tasks' data: the child
    serves the newest adapted set, as the API does, before each batch."""
    tasks_dir: str | None = None
    threads: int | None = None  # torch threads of the child; None: one core fewer than there are

    @classmethod
    def of(cls, scorer: ArchitectureScorer, *, database_url: str, checkpoint_dir: str,
           threads: int | None = None) -> ScoringProcessConfig:
        """The configuration that rebuilds ``scorer`` (its checkpoint, protocol and budget)."""
        return cls(database_url=database_url, checkpoint_dir=checkpoint_dir, threads=threads,
                   ghn_path=scorer.ghn_path, device=str(scorer.device),
                   eval_images=scorer.eval_images,
                   recalibration_batches=scorer.recalibration_batches,
                   recalibration_batch_size=scorer.recalibration_batch_size,
                   budget=scorer.budget, readout=scorer.readout,
                   base_version=scorer.base_version,
                   adapted_dir=str(scorer.adapted.ghn_dir) if scorer.adapted else None,
                   tasks_dir=str(scorer.adapted.tasks_dir) if scorer.adapted else None)

    def load_scorer(self) -> ArchitectureScorer:
        """The scorer this configuration describes (in the child); ``RuntimeError`` when its
        GHN does not score as the API's does (the file changed since the API loaded it)."""
        scorer = ArchitectureScorer.load(
            self.ghn_path, device=self.device, eval_images=self.eval_images,
            recalibration_batches=self.recalibration_batches,
            recalibration_batch_size=self.recalibration_batch_size, budget=self.budget,
            readout=self.readout, adapted_dir=self.adapted_dir, tasks_dir=self.tasks_dir)
        if scorer.base_version != self.base_version:
            raise RuntimeError(f"the GHN at {self.ghn_path} scores as version "
                               f"{scorer.base_version}, the API's as {self.base_version}")
        return scorer


@dataclass
class _Miss:
    graph: ArchitectureGraph
    task: str
    timings: dict[str, float]
    future: Future[ScoredMiss] = field(default_factory=Future)


@dataclass
class _Child:
    process: Any = None  # multiprocessing.Process (spawn context)
    connection: Connection | None = None
    start_failed: tuple[float, str] | None = None  # (monotonic time, why) of the last failure

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class ScoringPool:
    """``processes`` scoring children, each fed by a dispatcher thread of the API process."""

    def __init__(self, config: ScoringProcessConfig, *, processes: int = 1,
                 max_waiting: int = 32, batch_size: int = 8,
                 timeout_seconds: float | None = DEFAULT_SCORING_TIMEOUT_SECONDS,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if processes < 1:
            raise ValueError("a scoring pool needs at least one process")
        if timeout_seconds is not None and not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds!r}")
        self.config = config
        self.max_waiting = max_waiting
        self.batch_size = batch_size
        self.timeout_seconds = timeout_seconds
        self._on_batch = on_batch or (lambda _size: None)
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._waiting: deque[_Miss] = deque()
        self._pending: dict[tuple[str, str], _Miss] = {}  # waiting or being scored
        self._closed = False
        self._children = [_Child() for _ in range(processes)]
        self._ready = [threading.Event() for _ in range(processes)]
        self._threads = [threading.Thread(target=self._dispatch, args=(i,),
                                          name=f"nas-scoring-{i}", daemon=True)
                         for i in range(processes)]

    # ---- the API's side -------------------------------------------------------------------

    def start(self) -> None:
        """Starts the dispatchers; each starts its child at once, so the first miss does not
        wait for torch to load."""
        for thread in self._threads:
            thread.start()

    @property
    def ready(self) -> bool:
        """Whether at least one child has loaded its GHN and waits for work."""
        return any(event.is_set() for event in self._ready)

    def submit(self, graph: ArchitectureGraph, task: str,
               timings: Mapping[str, float] | None = None) -> tuple[Future[ScoredMiss], bool]:
        """Queues ``graph`` for scoring on ``task``: its future and whether this call queued it
        (``False``: the same graph and task were already waiting, and this shares their
        result). Raises :class:`ScoringBusy` when ``max_waiting`` graphs wait already,
        :class:`ScoringUnavailable` when the pool is closed."""
        key = (graph.content_hash(), task)
        with self._cond:
            if self._closed:
                raise ScoringUnavailable("the service is shutting down")
            queued = self._pending.get(key)
            if queued is not None:
                return queued.future, False
            if len(self._pending) >= self.max_waiting:
                raise ScoringBusy(f"{len(self._pending)} architectures are waiting for the "
                                  "hypernetwork")
            miss = _Miss(graph, task, dict(timings or {}))
            self._pending[key] = miss
            self._waiting.append(miss)
            self._cond.notify()
            return miss.future, True

    def close(self) -> None:
        """Fails what still waits and stops the children: each dispatcher stops its own child
        (killed after :data:`EXIT_SECONDS`) within a poll of the pool closing."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        self._fail(waiting, ScoringUnavailable("the service is shutting down"))
        for thread in self._threads:
            if thread.is_alive():
                thread.join(2 * EXIT_SECONDS + 2 * POLL_SECONDS)
        for child in self._children:  # a dispatcher that did not end in time
            _stop(child)

    # ---- dispatchers ------------------------------------------------------------------------

    def _dispatch(self, slot: int) -> None:
        """The loop of one dispatcher thread: the only code that talks to child ``slot``."""
        try:
            self._start(slot)
        except ScoringUnavailable as e:
            log.error("scoring process %d: %s", slot, e)
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._on_batch(len(batch))
                try:
                    self._score_batch(slot, batch)
                except Exception as e:  # noqa: BLE001 - a batch fails, the dispatcher goes on
                    self._ready[slot].clear()
                    _stop(self._children[slot])
                    if not isinstance(e, ScoringUnavailable):
                        log.exception("scoring process %d: batch failed", slot)
                        e = ScoringUnavailable(f"{type(e).__name__}: {e}")
                    self._fail(batch, e)
        finally:
            self._ready[slot].clear()
            _stop(self._children[slot])

    def _score_batch(self, slot: int, batch: list[_Miss]) -> None:
        child = self._children[slot]
        if not child.alive():
            self._start(slot)
        outcomes = self._score(child, batch)
        for miss, outcome in zip(batch, outcomes, strict=True):
            if miss.future.done():
                continue
            if isinstance(outcome, Exception):
                miss.future.set_exception(outcome)
            else:
                miss.future.set_result(outcome)
        self._forget(batch)

    def _next_batch(self) -> list[_Miss] | None:
        """Up to ``batch_size`` waiting misses of the first one's task; ``None`` once closed."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._waiting.popleft()
            batch = [first]
            for miss in list(self._waiting):
                if len(batch) >= self.batch_size:
                    break
                if miss.task == first.task:
                    self._waiting.remove(miss)
                    batch.append(miss)
            return batch

    def _start(self, slot: int) -> None:
        child = self._children[slot]
        _stop(child)
        if child.start_failed is not None:
            failed_at, why = child.start_failed
            if time.monotonic() - failed_at < RESTART_BACKOFF_SECONDS:
                raise ScoringUnavailable(why)
        try:
            self._spawn(slot)
        except ScoringUnavailable as e:
            _stop(child)  # a child that failed may still be on its way out
            if not self._closed:
                child.start_failed = (time.monotonic(), str(e))
            raise
        child.start_failed = None

    def _spawn(self, slot: int) -> None:
        child = self._children[slot]
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=serve_scoring, args=(self.config, child_end),
                                        name=f"nas-scoring-{slot}", daemon=True)
        process.start()
        child_end.close()
        child.process, child.connection = process, parent_end
        message = self._receive(child, START_SECONDS, "starting")
        if message[0] != "ready":
            raise ScoringUnavailable(f"the scoring process could not start: {message[1]}")
        log.info("scoring process %d ready (pid %d)", slot, process.pid)
        self._ready[slot].set()

    def _score(self, child: _Child, batch: Sequence[_Miss]) -> list[ScoredMiss | Exception]:
        assert child.connection is not None
        try:
            child.connection.send(([m.graph.to_json() for m in batch],
                                   [m.timings for m in batch], batch[0].task))
        except (OSError, EOFError, ValueError) as e:
            raise ScoringUnavailable(f"the scoring process is gone: {e}") from None
        timeout = None if self.timeout_seconds is None else self.timeout_seconds * len(batch)
        message = self._receive(child, timeout, f"scoring {len(batch)} architecture(s)")
        if message[0] == "failed":  # the whole batch: the task itself could not be scored
            error = _rebuild(message[1])
            return [error for _ in batch]
        return [_rebuild(o[1]) if o[0] == "error" else ScoredMiss(o[1], o[2], o[3])
                for o in message[1]]

    def _receive(self, child: _Child, timeout: float | None, doing: str) -> tuple[Any, ...]:
        """The child's next message; :class:`ScoringUnavailable` when it dies, the pool closes
        or ``timeout`` passes first."""
        assert child.connection is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if child.connection.poll(POLL_SECONDS):
                    return child.connection.recv()
            except (OSError, EOFError):
                pass  # the pipe broke: the child died, reported below
            if self._closed:
                raise ScoringUnavailable("the service is shutting down")
            if not child.alive():
                code = child.process.exitcode if child.process is not None else None
                raise ScoringUnavailable(f"the scoring process exited while {doing} "
                                         f"(exit status {code})")
            if deadline is not None and time.monotonic() > deadline:
                # The dispatcher stops (kills) the child and starts another for the next batch.
                raise ScoringUnavailable(f"the scoring process did not finish {doing} in "
                                         f"{timeout:g} s: it was stopped, and a new one scores "
                                         "the next request")

    def _fail(self, batch: Sequence[_Miss], error: Exception) -> None:
        for miss in batch:
            if not miss.future.done():
                miss.future.set_exception(error)
        self._forget(batch)

    def _forget(self, batch: Sequence[_Miss]) -> None:
        with self._cond:
            for miss in batch:
                key = (miss.graph.content_hash(), miss.task)
                if self._pending.get(key) is miss:
                    del self._pending[key]


async def scored(future: Future[ScoredMiss]) -> ScoredMiss:
    """The result of a miss :meth:`ScoringPool.submit` queued, awaited in the event loop. A wait
    that is cancelled (the client went away, the server stops) leaves the future alone: other
    requests may be waiting for the same graph."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[ScoredMiss] = loop.create_future()

    def copy() -> None:
        if waiter.done():
            return
        error = future.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(future.result())

    def done(_: Future[ScoredMiss]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody waits
            loop.call_soon_threadsafe(copy)

    future.add_done_callback(done)
    return await waiter


def _stop(child: _Child) -> None:
    process, connection = child.process, child.connection
    child.process = child.connection = None
    if connection is not None:
        with contextlib.suppress(OSError, ValueError):
            connection.send(None)  # exit when idle
        connection.close()
    if process is None:
        return
    process.join(EXIT_SECONDS)
    if process.is_alive():
        process.kill()
        process.join(EXIT_SECONDS)


# ---- the child --------------------------------------------------------------------------------


def serve_scoring(config: ScoringProcessConfig, connection: Connection) -> None:
    """A scoring child's body: load the scorer once, then score and store batches until told to
    stop (``None``) or the API's end of the pipe closes."""
    # Ctrl-C in a terminal reaches the whole process group: the API decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from nas_service.db import make_engine

    # The API process answers reads and hits on the cores scoring leaves it: with torch on
    # every core, each miss would take the API's core too.
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) - 1))
    retain_freed_memory()  # as every nas-service command: a batch reuses its blocks
    from nas_service.search import CheckpointStore, evaluate_architectures

    try:
        scorer = config.load_scorer()
        engine = make_engine(config.database_url)
        store = CheckpointStore(config.checkpoint_dir)
        if scorer.task is not None:
            with contextlib.suppress(DatasetError):  # each request reports it
                scorer.task_tensors(scorer.task)
    except Exception as e:  # noqa: BLE001 - reported to the API, which answers 503
        connection.send(("failed", f"{type(e).__name__}: {e}"))
        return
    connection.send(("ready", os.getpid()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        documents, timings, task = message
        try:
            spec = scorer.check_task(task)
            graphs = [ArchitectureGraph.from_json(d) for d in documents]
            evaluations = evaluate_architectures(engine, scorer, store, graphs, spec,
                                                 extra_timings=timings)
            reply: tuple[Any, ...] = ("done", [
                ("ok", ev.architecture.id, ev.created, ev.seconds)
                if ev.architecture is not None
                else ("error", _describe(ev.error or RuntimeError("not scored")))
                for ev in evaluations])
        except Exception as e:  # noqa: BLE001 - the task or the database, for the whole batch
            reply = ("failed", _describe(e))
        connection.send(reply)
        if not connection.poll(0):  # idle: hold the process's base, not this batch's peak
            release_freed_memory()
    engine.dispose()


def _describe(error: BaseException) -> tuple[Any, ...]:
    """An exception as plain values (not every one of them pickles)."""
    if isinstance(error, ScoringTooCostly):
        return ("too_costly", str(error), error.resource, error.estimate, error.limit)
    if is_memory_failure(error):
        return ("memory", str(error))
    if isinstance(error, UnsupportedArchitectureError):
        return ("unsupported", str(error))
    if isinstance(error, DatasetError):
        return ("dataset", str(error))
    if isinstance(error, ValueError):
        return ("value", str(error))
    return ("other", f"{type(error).__name__}: {error}")


def _rebuild(description: tuple[Any, ...] | str) -> Exception:
    """The exception :func:`_describe` described, of the type the API maps to its answer."""
    if isinstance(description, str):
        return ScoringUnavailable(description)
    kind, message, *rest = description
    if kind == "too_costly":
        return ScoringTooCostly(rest[0], rest[1], rest[2], message)
    if kind == "memory":
        return MemoryError(message)
    if kind == "unsupported":
        return UnsupportedArchitectureError(message)
    if kind == "dataset":
        return DatasetError(message)
    if kind == "value":
        return ValueError(message)
    return RuntimeError(message)
