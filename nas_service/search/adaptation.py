"""The background job that adapts the served GHN to a registered task.

One adaptation, as :meth:`AdaptationRunner.run_once` runs it::

    claim_next_adaptation (one at a time, service-wide)
      Θ*: the served adapted GHN (nas_service.ghn.tasks), else the checkpoint the service loads
      probe sets: fixed architectures of each earlier task (its input shape and class count)
      TaskAdapter (nas_service.ghn.adaptation): a zero embedding for the new task (by default
          all it learns; with lr > 0 the GHN's weights too, regularised towards the targets
          h(e_t', Θ*)), Adam; resumed from the task's saved training state when there is one
      for each step: architectures and a batch of the task's training images, both a function
          of the step alone; one update; heartbeat with progress; every
          ``checkpoint_every`` steps the training state is saved
      the adapted GHN and every embedding written as the next served generation
    finish_adaptation("succeeded", result: losses, each earlier task's drift)

A crash loses at most ``checkpoint_every`` steps: the lease expires, the job is claimed again and
resumes from the saved state (same ``Θ*``: nothing is served until an adaptation finishes). A
stop request (SIGTERM) saves the state and releases the job. A task whose data cannot be read
fails at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sqlalchemy import Engine

from nas_service.data import (
    DatasetError,
    TaskData,
    get_task,
    load_task,
    read_stored_task,
    register_task,
)
from nas_service.db import LeaseLost, tasks
from nas_service.db.tasks import ClaimedAdaptation
from nas_service.ghn import GraphHyperNetwork
from nas_service.ghn.adaptation import AdaptationConfig, TaskAdapter
from nas_service.ghn.checkpoint import load_ghn
from nas_service.ghn.tasks import load_served, read_manifest, save_served
from nas_service.graph import ArchitectureGraph
from nas_service.scoring.scorer import AdaptedSource
from nas_service.spaces import get_space

log = logging.getLogger("nas_service.adaptation")

STATE_FILE = "adaptation-state.safetensors"
PROBE_SEED = 1_000_000_007
"""Seeds of the probe architectures: far from the seeds of the training steps."""
STEP_SEED = 20_261_207
DEFAULT_SPACES = ("cells",)


@dataclass(frozen=True)
class AdaptationSettings:
    steps: int = 300
    beta: float = 0.01
    probe_architectures: int = 16
    batch_graphs: int = 4
    batch_images: int = 64
    checkpoint_every: int = 25
    lr: float = 0.0
    """Of the GHN's weights. ``0``, the default: only the task's embedding is learnt, so every
    earlier task scores exactly as before (``bench/task_adaptation_bench.py``: the regulariser
    at β = 0.01 with ``lr = 1e-4`` cost the bundled task 3.3 points and most of its ranking)."""
    embedding_lr: float = 1e-2
    max_parameters: int = 1_000_000
    """Of the sampled architectures (the bundled GHN was trained on these bounds)."""
    max_flops: int = 20_000_000

    def record(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AdaptationSettings:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


class AdaptationRunner:
    """Claims adaptation jobs and runs them; one per :meth:`run_once`."""

    def __init__(self, engine: Engine, source: AdaptedSource, base_checkpoint: str | Path, *,
                 device: str | torch.device = "cpu", worker_id: str = "adaptation",
                 lease_seconds: float = 30.0, heartbeat_seconds: float = 10.0,
                 max_attempts: int = 3,
                 on_step: Callable[[str, int, dict[str, float]], None] | None = None) -> None:
        self.engine = engine
        self.source = source
        self.base_checkpoint = Path(base_checkpoint)
        self.device = torch.device(device)
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.max_attempts = max_attempts
        self.on_step = on_step

    def run_once(self, stop: threading.Event | None = None) -> str | None:
        """Claim one adaptation and run it; ``None`` when there was none, else what became of
        it: ``succeeded``, ``failed``, ``released`` (stop), ``lease_lost`` or ``abandoned``."""
        stop = stop or threading.Event()
        claimed = tasks.claim_next_adaptation(self.engine, self.worker_id, self.lease_seconds,
                                              max_attempts=self.max_attempts)
        if claimed is None:
            return None
        log.info("adapting the GHN to task %r (attempt %d)", claimed.name, claimed.attempt)
        try:
            return self._run(claimed, stop)
        except LeaseLost:
            return "lease_lost"
        except DatasetError as e:
            return self._fail(claimed, f"the task's data cannot be read: {e}")
        except Exception as e:
            log.exception("adaptation of %r crashed", claimed.name)
            if claimed.attempt >= self.max_attempts:
                return self._fail(claimed, f"{type(e).__name__}: {e}")
            return "abandoned"  # the lease expires; the next claim resumes the saved state

    def _fail(self, claimed: ClaimedAdaptation, error: str) -> str:
        try:
            tasks.finish_adaptation(self.engine, claimed.name, claimed.lease_token, "failed",
                                    error=error)
        except LeaseLost:
            return "lease_lost"
        return "failed"

    # ---- one adaptation ------------------------------------------------------------------

    def _starting_point(self) -> tuple[GraphHyperNetwork, int]:
        """Θ*: the served adapted GHN of this base checkpoint, else the base checkpoint; and the
        served generation (0: none)."""
        manifest = read_manifest(self.source.ghn_dir)
        if manifest is not None and manifest.get("base") == self.source.base_sha256:
            loaded = load_served(self.source.ghn_dir, self.device)
            assert loaded is not None
            return loaded[0], int(manifest["generation"])
        return load_ghn(self.base_checkpoint, self.device), 0

    def _run(self, claimed: ClaimedAdaptation, stop: threading.Event) -> str:
        started = time.perf_counter()
        settings = AdaptationSettings.from_record(claimed.settings)
        folder = self.source.tasks_dir / claimed.name
        spec = register_task(read_stored_task(folder))
        data = load_task(spec.name)
        ghn, generation = self._starting_point()
        spaces = tuple((getattr(ghn, "training_record", {}) or {}).get("config", {})
                       .get("spaces") or DEFAULT_SPACES)
        earlier: list[str | None] = [None, *(t for t in ghn.task_embeddings if t != spec.name)]
        probes = {t: probe_architectures(spaces, get_task(t or ghn.task or "").input_shape,
                                         get_task(t or ghn.task or "").num_classes,
                                         settings.probe_architectures,
                                         max_parameters=settings.max_parameters,
                                         max_flops=settings.max_flops)
                  for t in earlier}
        adapter = TaskAdapter(ghn, spec.name, probes, AdaptationConfig(
            steps=settings.steps, beta=settings.beta, lr=settings.lr,
            embedding_lr=settings.embedding_lr))
        state_path = folder / STATE_FILE
        self._resume(adapter, state_path, generation)
        last_beat = time.monotonic()
        history: list[dict[str, float]] = []
        while adapter.step < settings.steps:
            if stop.is_set():
                self._save(adapter, state_path, generation)
                tasks.release_adaptation(self.engine, claimed.name, claimed.lease_token)
                return "released"
            graphs, images, labels = step_batch(adapter.step, data, settings, spaces,
                                                self.device)
            metrics = adapter.train_step(graphs, images, labels)
            history.append(metrics)
            if self.on_step is not None:
                self.on_step(spec.name, adapter.step, metrics)
            if adapter.step % settings.checkpoint_every == 0:
                self._save(adapter, state_path, generation)
            if (time.monotonic() - last_beat >= self.heartbeat_seconds
                    or adapter.step == settings.steps):
                last_beat = time.monotonic()
                if not tasks.heartbeat_adaptation(self.engine, claimed.name,
                                                  claimed.lease_token, self.lease_seconds,
                                                  adapter.step):
                    raise LeaseLost(claimed.name)
        current = read_manifest(self.source.ghn_dir)
        if (current or {}).get("generation", 0) != generation:
            # Another adaptation was served meanwhile (a lease that expired while this one
            # still ran): this one started from an older GHN, and serving it would forget.
            state_path.unlink(missing_ok=True)
            return self._fail(claimed, "another adaptation was served while this one ran; "
                                       "register the task again to adapt the current GHN")
        tail = history[-10:] or [{"loss": float("nan"), "accuracy": float("nan"),
                                  "regularizer": 0.0}]
        result = {"steps": adapter.step, "lr": settings.lr, "beta": settings.beta,
                  "loss": sum(m["loss"] for m in tail) / len(tail),
                  "accuracy": sum(m["accuracy"] for m in tail) / len(tail),
                  "regularizer": sum(m["regularizer"] for m in tail) / len(tail),
                  "drift": {name or (ghn.task or ""): value
                            for name, value in adapter.drift().items()},
                  "seconds": time.perf_counter() - started, "generation": generation + 1}
        manifest = save_served(self.source.ghn_dir, ghn, base=self.source.base_sha256,
                               training={**(getattr(ghn, "training_record", {}) or {}),
                                         "adapted": {spec.name: result}})
        result["generation"] = manifest["generation"]
        tasks.finish_adaptation(self.engine, claimed.name, claimed.lease_token, "succeeded",
                                result=result, progress_done=adapter.step)
        state_path.unlink(missing_ok=True)
        return "succeeded"

    def _save(self, adapter: TaskAdapter, path: Path, generation: int) -> None:
        tmp = path.with_suffix(".tmp")
        save_file(adapter.state(), str(tmp), metadata={"generation": str(generation)})
        tmp.replace(path)

    def _resume(self, adapter: TaskAdapter, path: Path, generation: int) -> None:
        """Load the saved training state when it was taken from the same ``Θ*``."""
        if not path.is_file():
            return
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                saved_generation = int((f.metadata() or {}).get("generation", -1))
            if saved_generation != generation:
                log.info("saved adaptation state of another GHN generation: starting over")
                return
            adapter.load_state(load_file(str(path), device=str(adapter.ghn.device)))
            log.info("resuming the adaptation of %r at step %d", adapter.task, adapter.step)
        except (OSError, SafetensorError, RuntimeError, KeyError, ValueError) as e:
            log.warning("cannot resume from %s (%s): starting over", path, e)


def step_seeds(step: int, count: int) -> list[int]:
    """The architectures of training step ``step``."""
    return [STEP_SEED + step * count + i for i in range(count)]


def step_batch(step: int, data: TaskData, settings: AdaptationSettings,
               spaces: tuple[str, ...], device: str | torch.device = "cpu"
               ) -> tuple[list[ArchitectureGraph], torch.Tensor, torch.Tensor]:
    """Training step ``step``'s architectures (of ``spaces`` in turn, shaped for the task) and
    batch of normalised training images and labels, on ``device``: a function of the step
    alone, so a resumed adaptation repeats the steps it lost. Also seeds torch's global
    generator for the step's dropout."""
    spec = data.spec
    graphs = [get_space(spaces[s % len(spaces)]).sample(
        s, input_shape=spec.input_shape, num_classes=spec.num_classes,
        max_parameters=settings.max_parameters, max_flops=settings.max_flops)
        for s in step_seeds(step, settings.batch_graphs)]
    gen = torch.Generator().manual_seed(STEP_SEED + step)
    index = torch.randint(0, len(data.train), (settings.batch_images,), generator=gen)
    images = data.normalize(data.train.images.index_select(0, index)).to(device)
    labels = data.train.labels.index_select(0, index).to(device)
    torch.manual_seed(STEP_SEED + step)
    return graphs, images, labels


def probe_architectures(spaces: tuple[str, ...], input_shape: tuple[int, ...], num_classes: int,
                        count: int, *, max_parameters: int = 1_000_000,
                        max_flops: int = 20_000_000) -> list[ArchitectureGraph]:
    """The fixed probe set of a task of this shape: the same graphs for every adaptation."""
    return [get_space(spaces[i % len(spaces)]).sample(
        PROBE_SEED + i, input_shape=input_shape, num_classes=num_classes,
        max_parameters=max_parameters, max_flops=max_flops) for i in range(count)]
