"""The worker: claims search jobs from the database queue and runs them.

One job, as :meth:`Worker.run_job` runs it::

    claim_next_job ─> strategy for (space, task, seed, constraints)
        └─ for each bracket of the job's fidelity schedule (the whole job without rungs),
           for each batch of its missing candidate indices (a generation, for evolution):
             heartbeat (lease lost: stop writing; cancel requested: finish "cancelled";
                        stop asked (SIGTERM): release the job; budget_seconds spent: finish)
             propose candidate i from (seed, i) and the recorded history
             constraints checked on the graph before any GHN work  ─> "rejected" + reason
             over the scoring budget, or out of memory ─> "rejected" + the estimate
             one GHN forward pass for the batch, then each network scored ─> "scored"
             a job ranked by short training, at its last rung: each scored network trained
             for a few SGD steps from its default initialisation, and ranked by that accuracy
             an exception while scoring one candidate ─> "failed" + the error, the job goes on
             record_candidate with the lease token, at rung 0
           then rung by rung, the bracket's best 1/eta of the rung below (not promoted yet),
           in batches: the same graphs scored at the next rung ─> promote_candidate
    finish_job("succeeded")

Rungs (:mod:`nas_service.scoring.fidelity`): rung *k* scores with a view of the scorer at that
rung's fidelity (:meth:`ArchitectureScorer.at_fidelity`: the same GHN and lock, fewer images).
A bracket's promotions are a function of its candidates' stored scores, so a worker that takes
over a job after a crash finishes the same promotions and redoes none that were recorded.

A background thread renews the lease every ``heartbeat_seconds`` while a batch is being scored,
so a slow batch does not lose its lease; each write still names the token, so a worker whose
lease was taken over writes nothing more (``LeaseLost`` stops it at once).

A batch stuck in scoring: the same thread is the batch's watchdog. Admission control keeps what
one candidate costs to a minute or two of a 2-core CPU, so a batch still scoring
``scoring_timeout_seconds`` per candidate after it began (``NAS_SCORING_TIMEOUT_SECONDS``) is
stuck, in a native kernel that never returns (oneDNN's channels-last weight gradient once spun
forever on two threads), not slow. The watchdog then records the batch's candidates as
``failed`` with that reason (at their rung, for a promotion), gives the job back to the queue
as a crash does (the attempt counted; failed on the last one), so that another worker goes on
with it and skips those candidates, and sets :attr:`Worker.stuck`. A thread stuck in native
code cannot be stopped from Python: ``nas-service worker`` and ``serve``'s worker process exit
(:data:`EXIT_WORKER_STUCK`) for their supervisor (docker compose, ``serve``) to start a fresh
process (:mod:`nas_service.api.workers`). Should the stuck thread ever return, its lease is gone
and it writes nothing.

Failures of a whole job: a job that cannot start (unknown space or task, no GHN for the task) is
finished as ``failed`` at once. Any other exception (the database went away, out of memory)
abandons the job without finishing it: it goes back to the queue at once, the attempt counted and
the error in an ``abandoned`` event (or, when the database cannot be reached, its lease expires),
and the queue hands it out again, up to ``max_attempts`` claims; on its last attempt the worker
finishes it as ``failed`` with the error.

``budget_seconds`` counts from the moment this worker claimed the job (each attempt gets the
whole budget); the candidates recorded when it runs out are the job's result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from nas_service.data import DatasetError, TaskSpec
from nas_service.db import LeaseLost, listings, queue, read_session, write_session
from nas_service.db.queue import ClaimedJob, LeaseStatus
from nas_service.scoring import (
    ArchitectureScorer,
    ScoringTooCostly,
    TaskNotSupported,
    is_memory_failure,
    ranking_value,
)
from nas_service.scoring.fidelity import Fidelity, FidelitySchedule
from nas_service.scoring.protocol import (
    DEFAULT_SCORING_TIMEOUT_SECONDS,
    DEFAULT_SHORT_TRAINING_STEPS,
    MAX_SHORT_TRAINING_STEPS,
    SHORT_TRAINING_KIND,
)
from nas_service.scoring.short_training import ShortTrainingResult
from nas_service.spaces import SearchSpaceError

from .adaptation import AdaptationRunner
from .checkpoints import CheckpointStore
from .evaluation import Evaluation, evaluate_architectures
from .strategies import Outcome, Proposal, SearchStrategy, check_constraints, make_strategy

if TYPE_CHECKING:
    from nas_service.settings import Settings

log = logging.getLogger("nas_service.worker")

MAX_REASON_LENGTH = 2000
EXIT_WORKER_STUCK = 3
"""The exit status of a worker process (``nas-service worker``, ``serve``'s worker process) whose
batch got stuck in scoring: its job was given back, and a fresh process is to take over."""


def _ignore(*_args: object) -> None:
    return None


@dataclass
class WorkerHooks:
    """Callbacks the process embedding a worker uses to observe it (the API's metrics, tests)."""

    candidate_recorded: Callable[[str], None] = _ignore  # status
    candidate_promoted: Callable[[int], None] = _ignore  # the rung it was scored at
    heartbeat: Callable[[bool], None] = _ignore  # lease still held
    job_finished: Callable[[str], None] = _ignore  # outcome, see Worker.run_job
    batch_done: Callable[[str, list[int]], None] = _ignore  # job id, indices recorded


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class _JobStopping(Exception):
    """A candidate's short training not run: its job was cancelled or its lease lost first."""


@dataclass(frozen=True)
class _BatchInFlight:
    """What the watchdog needs of the batch being scored (:meth:`Worker._scoring`)."""

    indices: tuple[int, ...]
    rung: int
    eval_images: int  # of the rung, for the failure a promotion records
    deadline: float  # time.monotonic()
    seconds: float


@dataclass
class _LeaseState:
    lost: bool = False
    cancel_requested: bool = False
    given_up: bool = False  # by the watchdog, which reported the job's outcome itself
    in_flight: _BatchInFlight | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    """Runs jobs from the queue until :meth:`stop` is called (or one job, with ``once``)."""

    def __init__(self, engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore, *,
                 worker_id: str | None = None, lease_seconds: float = 30.0,
                 heartbeat_seconds: float = 10.0, max_attempts: int = 3, batch_size: int = 8,
                 poll_seconds: float = 2.0, hooks: WorkerHooks | None = None,
                 adaptation: AdaptationRunner | None = None,
                 scoring_timeout_seconds: float | None = DEFAULT_SCORING_TIMEOUT_SECONDS) -> None:
        if heartbeat_seconds >= lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        if scoring_timeout_seconds is not None and not scoring_timeout_seconds > 0:
            raise ValueError("scoring_timeout_seconds must be positive")
        self.engine = engine
        self.scorer = scorer
        self.store = store
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.hooks = hooks or WorkerHooks()
        # Adaptations of the GHN to registered tasks come before search jobs: a task is not
        # scored at all until its adaptation is done.
        self.adaptation = adaptation
        self.scoring_timeout_seconds = scoring_timeout_seconds
        self.stuck = threading.Event()
        """Set once a batch outlived its timeout: the thread running the worker is stuck in
        it, and its job was given back (see the module's docstring)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._current: ClaimedJob | None = None

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, scorer: ArchitectureScorer,
                      store: CheckpointStore, *, worker_id: str | None = None,
                      hooks: WorkerHooks | None = None) -> Worker:
        worker_id = worker_id or default_worker_id()
        adaptation = None
        if scorer.adapted is not None and scorer.ghn_path is not None:
            adaptation = AdaptationRunner(
                engine, scorer.adapted, scorer.ghn_path, device=scorer.device,
                worker_id=worker_id, lease_seconds=settings.lease_seconds,
                heartbeat_seconds=settings.heartbeat_seconds, max_attempts=settings.max_attempts)
        return cls(engine, scorer, store, worker_id=worker_id,
                   lease_seconds=settings.lease_seconds,
                   heartbeat_seconds=settings.heartbeat_seconds,
                   max_attempts=settings.max_attempts, batch_size=settings.ghn_batch_size,
                   poll_seconds=settings.worker_poll_seconds, hooks=hooks,
                   adaptation=adaptation,
                   scoring_timeout_seconds=settings.scoring_timeout_seconds)

    # ---- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: between two batches it releases its job (queued again, the
        attempt not counted) and :meth:`run` returns. Safe from a signal handler."""
        self._stop.set()
        self._wake.set()

    def release_current_job(self) -> bool:
        """Gives the job this worker holds back to the queue now, from another thread, without
        waiting for the batch it is scoring (a process shutting down whose grace period ran
        out): another worker can claim it at once. This worker's next write with the old
        lease is refused (``LeaseLost``), so nothing it computes later is stored. ``True`` when
        a job was released."""
        claimed = self._current
        if claimed is None:
            return False
        try:
            queue.release_job(self.engine, claimed.job_id, claimed.lease_token)
        except LeaseLost:
            return False  # finished, released or taken over meanwhile
        log.info("worker %s: job %s released", self.worker_id, claimed.job_id)
        return True

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wake(self) -> None:
        """A job was queued: claim now instead of at the end of the poll interval."""
        self._wake.set()

    def run(self, *, once: bool = False) -> None:
        """Claims and runs jobs until stopped; with ``once``, runs at most one job and returns
        (at once when the queue is empty)."""
        while not self._stop.is_set():
            if self._adapt():
                if once:
                    return
                continue
            try:
                claimed = queue.claim_next_job(self.engine, self.worker_id, self.lease_seconds,
                                               max_attempts=self.max_attempts)
            except Exception:
                log.exception("worker %s: cannot claim a job", self.worker_id)
                claimed = None
                if once:
                    return
            if claimed is None:
                if once:
                    return
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self.run_job(claimed)
            if once:
                return

    def run_until_stopped(self, should_stop: Callable[[], bool], grace_seconds: float, *,
                          once: bool = False) -> str:
        """Runs :meth:`run` in a daemon thread, the caller's thread keeping time, as a worker
        process does: until ``run`` returns, ``should_stop()`` (called in a loop, it may block
        for a moment) answers ``True``, or a batch gets stuck. Returns ``"stuck"`` (the thread
        is left in its batch, whose job the watchdog gave back: the process should exit with
        :data:`EXIT_WORKER_STUCK`), ``"released"`` (stopped, but the batch outlived
        ``grace_seconds``: its job was released for another worker, and its thread is still in
        torch, not to be waited for) or ``"stopped"``."""
        runner = threading.Thread(target=self.run, kwargs={"once": once}, name="nas-worker",
                                  daemon=True)
        runner.start()
        while runner.is_alive() and not self.stuck.is_set():
            if should_stop():
                break
        if self.stuck.is_set():
            log.error("worker %s: a batch is stuck in scoring; its job went back to the queue; "
                      "exiting for a fresh process", self.worker_id)
            return "stuck"
        self.stop()
        runner.join(grace_seconds)
        if runner.is_alive():
            log.warning("worker %s: the batch did not end in %g s; releasing its job",
                        self.worker_id, grace_seconds)
            self.release_current_job()
            return "released"
        return "stopped"

    def _adapt(self) -> bool:
        """Runs one adaptation of the GHN to a registered task, if one is waiting."""
        if self.adaptation is None:
            return False
        try:
            outcome = self.adaptation.run_once(self._stop)
        except Exception:
            log.exception("worker %s: cannot claim an adaptation", self.worker_id)
            return False
        if outcome is not None:
            log.info("worker %s: adaptation %s", self.worker_id, outcome)
        return outcome is not None

    # ---- one job -------------------------------------------------------------------------------

    def run_job(self, claimed: ClaimedJob) -> str:
        """Runs a claimed job; returns what became of it: ``succeeded``, ``failed``,
        ``cancelled``, ``released`` (stop requested), ``lease_lost`` or ``abandoned``."""
        log.info("worker %s: job %s (attempt %d)", self.worker_id, claimed.job_id, claimed.attempt)
        lease = _LeaseState()
        done = threading.Event()
        keeper = threading.Thread(target=self._keep_lease, args=(claimed, lease, done),
                                  name=f"lease-{claimed.job_id[:8]}", daemon=True)
        keeper.start()
        self._current = claimed
        try:
            outcome = self._run(claimed, lease)
        except LeaseLost:
            outcome = "lease_lost"
        except Exception as e:
            log.exception("worker %s: job %s crashed", self.worker_id, claimed.job_id)
            outcome = self._crashed(claimed, e)
        finally:
            self._current = None
            done.set()
            keeper.join()
        log.info("worker %s: job %s %s", self.worker_id, claimed.job_id, outcome)
        if not lease.given_up:
            self.hooks.job_finished(outcome)
        return outcome

    def _run(self, claimed: ClaimedJob, lease: _LeaseState) -> str:
        try:
            spec = self.scorer.check_task(claimed.task)
            strategy = make_strategy(claimed.strategy.value, claimed.space, seed=claimed.seed,
                                     input_shape=spec.input_shape, num_classes=spec.num_classes,
                                     constraints=claimed.constraints)
            schedule = FidelitySchedule.from_config(claimed.fidelity,
                                                    self.scorer.full_images(spec))
            training_steps = _short_training_steps(claimed.ranking, spec.is_language_model)
        except (DatasetError, TaskNotSupported, SearchSpaceError, ValueError, KeyError,
                TypeError) as e:
            queue.finish_job(self.engine, claimed.job_id, claimed.lease_token, "failed",
                             error=f"cannot run this job: {e}")
            return "failed"
        history = self._history(claimed.job_id)
        deadline = (time.monotonic() + claimed.budget_seconds
                    if claimed.budget_seconds is not None else None)
        run = _JobRun(claimed, spec, strategy, schedule, history, lease, deadline,
                      training_steps)
        for bracket in schedule.brackets(claimed.budget_candidates):
            pending = [i for i in bracket if i not in history]
            for batch in _batches(pending, self.batch_size, strategy.generation_size):
                stop = self._between_batches(run)
                if stop is not None:
                    return stop
                if run.out_of_time:
                    break
                self._run_batch(run, batch)
                self.hooks.batch_done(claimed.job_id, list(batch))
            for rung in range(1, schedule.top_rung + 1):
                if run.out_of_time:
                    break
                for batch in _chunks(self._promotions(run, bracket, rung), self.batch_size):
                    stop = self._between_batches(run)
                    if stop is not None:
                        return stop
                    if run.out_of_time:
                        break
                    self._promote_batch(run, batch, rung)
                    self.hooks.batch_done(claimed.job_id, list(batch))
            if run.out_of_time:
                break
        if lease.cancel_requested or self._beat(claimed, lease).cancel_requested:
            queue.finish_job(self.engine, claimed.job_id, claimed.lease_token, "cancelled")
            return "cancelled"
        queue.finish_job(self.engine, claimed.job_id, claimed.lease_token, "succeeded")
        return "succeeded"

    def _between_batches(self, run: _JobRun) -> str | None:
        """What ends the job before the next batch (``released``, ``lease_lost``,
        ``cancelled``), or ``None``; sets ``run.out_of_time`` once ``budget_seconds`` is spent."""
        claimed = run.claimed
        if self._stop.is_set():
            queue.release_job(self.engine, claimed.job_id, claimed.lease_token)
            return "released"
        status = self._beat(claimed, run.lease)
        if not status:
            return "lease_lost"
        if status.cancel_requested:
            queue.finish_job(self.engine, claimed.job_id, claimed.lease_token, "cancelled")
            return "cancelled"
        if run.deadline is not None and time.monotonic() >= run.deadline:
            run.out_of_time = True
            with write_session(self.engine) as session:
                queue.add_event(session, claimed.job_id, "budget_seconds_spent",
                                {"budget_seconds": claimed.budget_seconds,
                                 "recorded": len(run.history)})
        return None

    def _promotions(self, run: _JobRun, bracket: range, rung: int) -> list[int]:
        """The candidates of ``bracket`` that go on to ``rung`` and are not there yet: the best
        of those scored at ``rung - 1`` (:meth:`FidelitySchedule.promoted`), less those whose
        ``rung`` was already tried."""
        scores = {i: o.rung_scores[rung - 1] for i in bracket
                  if (o := run.history.get(i)) is not None and o.status == "scored"
                  and len(o.rung_scores) >= rung and o.rung_scores[rung - 1] is not None}
        return [i for i in run.schedule.promoted(scores)  # type: ignore[arg-type]
                if len(run.history[i].rung_scores) == rung]

    def _run_batch(self, run: _JobRun, batch: Sequence[int]) -> None:
        claimed = run.claimed
        started = time.perf_counter()
        proposals: list[Proposal] = [run.strategy.propose(i, run.history) for i in batch]
        propose_seconds = (time.perf_counter() - started) / len(batch)
        to_score: list[Proposal] = []
        for p in proposals:
            reason = p.reason if p.graph is None else check_constraints(p.graph,
                                                                        claimed.constraints)
            if reason is None:
                to_score.append(p)
                continue
            self._record(run, p.index, "rejected", reason=reason,
                         num_parameters=p.graph.num_parameters if p.graph else None,
                         flops=p.graph.flops if p.graph else None, seconds=propose_seconds)
        if not to_score:
            return
        scorer = run.scorer_at(self.scorer, 0)
        with self._scoring(run, [p.index for p in to_score], rung=0):
            evaluations = evaluate_architectures(
                self.engine, scorer, self.store,
                [p.graph for p in to_score if p.graph is not None], run.spec)
            trainings = self._short_trainings(run, scorer, evaluations, rung=0)
        for p, ev, training in zip(to_score, evaluations, trainings, strict=True):
            if isinstance(training, _JobStopping):
                continue
            graph = ev.graph
            error = _failure(ev, training)
            seconds = propose_seconds + ev.seconds + _seconds(training)
            if error is not None:
                # A candidate this worker cannot afford is a property of the candidate, not a
                # failure of the worker: rejected, with the estimate or the allocation that failed.
                unaffordable = isinstance(error, ScoringTooCostly) or is_memory_failure(error)
                self._record(run, p.index, "rejected" if unaffordable else "failed",
                             reason=_reason(error, training),
                             architecture_id=ev.architecture.id if ev.architecture else None,
                             num_parameters=graph.num_parameters, flops=graph.flops,
                             seconds=seconds)
                continue
            assert ev.architecture is not None
            score, fields = _rung_score(ev.architecture.scores, training)
            self._record(run, p.index, "scored", score=score,
                         architecture_id=ev.architecture.id,
                         num_parameters=graph.num_parameters, flops=graph.flops,
                         seconds=seconds, rung=0,
                         eval_images=ev.architecture.scores.get("images"),
                         architecture_scores=fields)

    def _short_trainings(self, run: _JobRun, scorer: ArchitectureScorer,
                         evaluations: Sequence[Evaluation], rung: int
                         ) -> list[ShortTrainingResult | Exception | None]:
        """Each scored graph's short training where the job ranks ``rung`` by it (its last
        rung), on that rung's validation images; ``None`` elsewhere. A graph it cannot afford
        or that fails gets the exception; once the job is cancelled or its lease lost, the
        graphs not trained yet get :class:`_JobStopping` and are left unrecorded (a batch of
        short trainings takes minutes: a cancel waits for one of them, not for all)."""
        out: list[ShortTrainingResult | Exception | None] = [None] * len(evaluations)
        if run.training_steps is None or rung != run.schedule.top_rung:
            return out
        for k, ev in enumerate(evaluations):
            if ev.architecture is None:
                continue
            if run.lease.cancel_requested or run.lease.lost:
                out[k] = _JobStopping()
                continue
            try:
                out[k] = scorer.short_training(ev.graph, run.spec, run.training_steps)
            except Exception as e:  # noqa: BLE001 - this candidate's failure, recorded with it
                out[k] = e
        return out

    def _promote_batch(self, run: _JobRun, batch: Sequence[int], rung: int) -> None:
        """Scores the candidates ``batch`` (scored at ``rung - 1``) at ``rung``: the same
        graphs (derived again from the job's seed and rung-0 history), one GHN batch."""
        claimed = run.claimed
        graphs = [run.strategy.propose(i, run.history).graph for i in batch]
        scorer = run.scorer_at(self.scorer, rung)
        images = run.fidelity(self.scorer, rung).images
        with self._scoring(run, batch, rung=rung, eval_images=images):
            evaluations = evaluate_architectures(self.engine, scorer, self.store,
                                                 [g for g in graphs if g is not None], run.spec)
            trainings = self._short_trainings(run, scorer, evaluations, rung)
        for index, ev, training in zip(batch, evaluations, trainings, strict=True):
            if run.lease.lost:
                raise LeaseLost(claimed.job_id)
            if isinstance(training, _JobStopping):
                continue  # stays at the rung it was scored at
            outcome = run.history[index]
            error = _failure(ev, training)
            if error is not None:
                queue.promote_candidate(
                    self.engine, claimed.job_id, claimed.lease_token, index, rung=rung,
                    eval_images=images, score=None, error=_reason(error, training))
                run.history[index] = Outcome(outcome.status, outcome.score,
                                             (*outcome.rung_scores, None))
                continue
            assert ev.architecture is not None
            score, fields = _rung_score(ev.architecture.scores, training)
            queue.promote_candidate(
                self.engine, claimed.job_id, claimed.lease_token, index, rung=rung,
                eval_images=ev.architecture.scores.get("images", images), score=score,
                architecture_id=ev.architecture.id, seconds=ev.seconds + _seconds(training),
                architecture_scores=fields)
            run.history[index] = Outcome(outcome.status, outcome.score,
                                         (*outcome.rung_scores, score))
            self.hooks.candidate_promoted(rung)

    def _record(self, run: _JobRun, index: int, status: str, **fields: object) -> None:
        claimed = run.claimed
        if run.lease.lost:
            raise LeaseLost(claimed.job_id)
        queue.record_candidate(self.engine, claimed.job_id, claimed.lease_token, index,
                               status=status, **fields)  # type: ignore[arg-type]
        score = fields.get("score")
        value = float(score) if isinstance(score, float) else None
        run.history[index] = Outcome(status, value, (value,) if value is not None else ())
        self.hooks.candidate_recorded(status)

    def _history(self, job_id: str) -> dict[int, Outcome]:
        history: dict[int, Outcome] = {}
        cursor = None
        with read_session(self.engine) as session:
            while True:
                page = listings.list_candidates(session, job_id, order_by="index",
                                                limit=listings.MAX_PAGE_SIZE, cursor=cursor)
                for c in page.items:
                    history[c.index] = _outcome(c.status.value, c.score, c.rung_scores)
                if page.next_cursor is None:
                    return history
                cursor = page.next_cursor

    # ---- the lease -----------------------------------------------------------------------------

    def _beat(self, claimed: ClaimedJob, lease: _LeaseState) -> LeaseStatus:
        status = queue.heartbeat(self.engine, claimed.job_id, claimed.lease_token,
                                 self.lease_seconds, max_attempts=self.max_attempts)
        with lease.lock:
            lease.lost = lease.lost or not status.held
            lease.cancel_requested = lease.cancel_requested or status.cancel_requested
        self.hooks.heartbeat(status.held)
        return status

    @contextlib.contextmanager
    def _scoring(self, run: _JobRun, indices: Sequence[int], *, rung: int,
                 eval_images: int = 0) -> Iterator[None]:
        """Marks the batch ``indices`` in flight for the watchdog while its scoring runs."""
        seconds = None if self.scoring_timeout_seconds is None else (
            self.scoring_timeout_seconds * max(1, len(indices)))
        if seconds is not None:
            with run.lease.lock:
                run.lease.in_flight = _BatchInFlight(tuple(indices), rung, eval_images,
                                                     time.monotonic() + seconds, seconds)
        try:
            yield
        finally:
            with run.lease.lock:
                # The watchdog gave the batch up meanwhile: what it scored is not to be written.
                given_up = run.lease.lost and run.lease.in_flight is not None
                run.lease.in_flight = None
            if given_up:
                raise LeaseLost(run.claimed.job_id)

    def _keep_lease(self, claimed: ClaimedJob, lease: _LeaseState,
                    done: threading.Event) -> None:
        while not done.wait(self.heartbeat_seconds):
            if self._give_up_if_stuck(claimed, lease):
                return
            try:
                if not self._beat(claimed, lease):
                    return
            except Exception:  # the database is away: the next beat may succeed in time
                log.warning("worker %s: heartbeat of job %s failed", self.worker_id,
                            claimed.job_id, exc_info=True)

    def _give_up_if_stuck(self, claimed: ClaimedJob, lease: _LeaseState) -> bool:
        """The watchdog: when the batch in flight passed its deadline, fails its candidates,
        gives the job back and sets :attr:`stuck` (the module's docstring says why)."""
        with lease.lock:
            batch = lease.in_flight
            if batch is None or time.monotonic() < batch.deadline or lease.lost:
                return False
            lease.lost = True  # from here on the stuck thread writes nothing
            lease.given_up = True
        reason = (f"scoring did not finish in {batch.seconds:g} s (NAS_SCORING_TIMEOUT_SECONDS "
                  f"per candidate): worker {self.worker_id} is stuck in it and gave the job up")
        log.error("worker %s: job %s: %s (candidates %s, rung %d)", self.worker_id,
                  claimed.job_id, reason, list(batch.indices), batch.rung)
        try:
            for index in batch.indices:
                if batch.rung == 0:
                    queue.record_candidate(self.engine, claimed.job_id, claimed.lease_token,
                                           index, status="failed", reason=reason)
                    self.hooks.candidate_recorded("failed")
                else:
                    queue.promote_candidate(self.engine, claimed.job_id, claimed.lease_token,
                                            index, rung=batch.rung,
                                            eval_images=batch.eval_images, score=None,
                                            error=reason)
        except Exception:  # the database is away: the lease expires and the batch is redone
            log.exception("worker %s: cannot record the stuck batch of job %s", self.worker_id,
                          claimed.job_id)
        self.hooks.job_finished(self._crashed(claimed, TimeoutError(reason)))
        self.stuck.set()
        self._stop.set()  # were the thread ever to come back, it claims nothing more
        return True

    def _crashed(self, claimed: ClaimedJob, error: Exception) -> str:
        reason = _reason(error, None)
        if claimed.attempt < self.max_attempts:
            try:  # queued again at once, the attempt counted: any worker retries it now
                queue.abandon_job(self.engine, claimed.job_id, claimed.lease_token, reason)
            except Exception:  # the database is away: the lease expires and the queue retries
                log.warning("worker %s: cannot give job %s back", self.worker_id,
                            claimed.job_id, exc_info=True)
            return "abandoned"
        try:
            queue.finish_job(self.engine, claimed.job_id, claimed.lease_token, "failed",
                             error=reason)
        except Exception:
            log.exception("worker %s: cannot mark job %s failed", self.worker_id,
                          claimed.job_id)
            return "abandoned"
        return "failed"


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


def _rung_score(scores: dict[str, Any], training: ShortTrainingResult | Exception | None
                ) -> tuple[float, dict[str, Any]]:
    """A scored rung's ranking value and what its entry keeps besides: the short training's
    accuracy where there is one, else the architecture's ranking value; the predicted-weights
    accuracy either way."""
    fields = {"predicted_accuracy": scores.get("value"),
              "recalibration_images": scores.get("recalibration_images")}
    if not isinstance(training, ShortTrainingResult):
        return ranking_value(scores), fields
    return training.accuracy, {**fields, "score_kind": SHORT_TRAINING_KIND,
                               "short_training_seconds": round(training.seconds, 4)}


def _failure(ev: Evaluation, training: ShortTrainingResult | Exception | None
             ) -> Exception | None:
    """What kept a candidate from its score: its evaluation's error, else its short
    training's; ``None`` when it has one."""
    if ev.architecture is None:
        return ev.error or RuntimeError("not scored")
    return training if isinstance(training, Exception) else None


def _reason(error: Exception, training: ShortTrainingResult | Exception | None) -> str:
    """The stored reason of a candidate's ``error`` (:func:`_failure`)."""
    what = "short training: " if error is training else ""
    return f"{what}{type(error).__name__}: {error}"[:MAX_REASON_LENGTH]


def _seconds(training: ShortTrainingResult | Exception | None) -> float:
    return training.seconds if isinstance(training, ShortTrainingResult) else 0.0


def _short_training_steps(ranking: dict[str, Any] | None, language_task: bool) -> int | None:
    """The SGD steps of a job ranked by short training (``None``: ranked by the GHN's score);
    ``ValueError`` for a ranking that cannot run."""
    if ranking is None or ranking.get("method", "ghn") == "ghn":
        return None
    if ranking.get("method") != "short-training":
        raise ValueError(f"unknown ranking method {ranking.get('method')!r}")
    if language_task:
        raise ValueError("ranking by short-training needs an image classification task")
    steps = ranking.get("steps", DEFAULT_SHORT_TRAINING_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or not (
            1 <= steps <= MAX_SHORT_TRAINING_STEPS):
        raise ValueError(f"short-training steps must be 1 to {MAX_SHORT_TRAINING_STEPS}, "
                         f"got {steps!r}")
    return steps


def _outcome(status: str, score: float | None,
             rung_scores: Sequence[dict[str, Any]] | None) -> Outcome:
    """A stored candidate as the worker's history holds it (rows without ``rung_scores`` hold
    one full score)."""
    if not rung_scores:
        return Outcome(status, score, (score,) if score is not None else ())
    ordered = sorted(rung_scores, key=lambda e: int(e.get("rung", 0)))
    values = tuple(None if e.get("score") is None else float(e["score"]) for e in ordered)
    return Outcome(status, values[0], values)


@dataclass
class _JobRun:
    """What one run of a claimed job carries from batch to batch."""

    claimed: ClaimedJob
    spec: TaskSpec
    strategy: SearchStrategy
    schedule: FidelitySchedule
    history: dict[int, Outcome]
    lease: _LeaseState
    deadline: float | None
    training_steps: int | None = None
    """The SGD steps of the short training the job ranks its last rung by; ``None``: the GHN's
    score."""
    out_of_time: bool = False

    def fidelity(self, scorer: ArchitectureScorer, rung: int) -> Fidelity:
        return scorer.fidelity_of_images(self.schedule.rungs[rung], self.spec)

    def scorer_at(self, scorer: ArchitectureScorer, rung: int) -> ArchitectureScorer:
        return scorer.at_fidelity(self.fidelity(scorer, rung), self.spec)


def _batches(indices: Sequence[int], size: int, generation: int | None) -> list[list[int]]:
    """Consecutive runs of ``indices`` of at most ``size``, never across a generation."""
    batches: list[list[int]] = []
    for i in indices:
        if (batches and len(batches[-1]) < size
                and (generation is None or batches[-1][0] // generation == i // generation)):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
