"""The surrogate score of architectures, as the service computes it: one GHN forward pass for a
batch of graphs, then, per graph, the predicted weights in a runnable network, batch norm
recalibrated on a few training batches, and accuracy on the validation split in eval mode.

:class:`ArchitectureScorer` is the one object that owns the GHN in a process. It holds the task
data in memory (decoded once, cut to the evaluation images, on the GHN's device) and a lock: the
threads that share one scorer score one at a time, since torch gains nothing from two forward
passes racing on the same cores (a worker thread gets a scorer of its own, :meth:`sibling`).

Guarantees:

- :meth:`ArchitectureScorer.score` is deterministic: the same graph, task and settings give the
  same parameters, the same recalibrated statistics (fixed training batches, seed 0) and the same
  accuracy on the same images (the first ``eval_images`` of the fixed validation split).
- A failure in one graph of a batch (an op the GHN was not trained with, a network that does not
  fit in memory) is returned as that graph's result; the other graphs are still scored.
- Admission control: a graph whose estimated cost passes the scorer's :class:`ScoringBudget`
  (:mod:`nas_service.scoring.cost`) comes back as :class:`ScoringTooCostly` before any of its
  tensors is allocated, and the evaluation runs in batches small enough for the budget.
- The returned ``state`` is exactly ``to_module(graph).state_dict()``'s key set (parameters and
  batch-norm buffers), as CPU tensors, ready for a safetensors checkpoint.
- A score is what a user gets from the checkpoint the plain way (``to_module``,
  ``load_state_dict``, ``accuracy`` on the same images): the batch size of the evaluation does
  not change a network's outputs in eval mode. On a CPU the forward passes run channels-last,
  which PyTorch's CPU convolutions run faster (a median 1.3x a score on small networks,
  ``bench/layout_bench.py``), and the evaluation's with batch norm folded into the
  convolutions before it; both move logits in their last bits, so the images whose two
  largest logits nearly tie are evaluated again on the plain network in the default layout
  (:func:`~nas_service.scoring.evaluation.default_layout_accuracy`) and the score is the
  default layout's. The recalibrated statistics and the refitted classifier are
  computed channels-last and stored as they came out (the scores' ``ghn_version`` names the
  layout), so the checkpoint holds exactly the weights that were evaluated.
- With a single recalibration batch (the cheap rungs), the classifier's readout reads its
  features off the recalibration's own forward pass
  (:func:`~nas_service.scoring.evaluation.recalibrate` with ``one_pass``), one pass fewer.

Speed: on a CPU nearly all of a candidate's time is the network's forward passes over the
validation images (``bench/search_bench.py``), so they run in batches of
:data:`CPU_EVAL_BATCH_SIZE`, about 3x less CPU time than batches of 1,000 on the cell space.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas_service.data import (
    DatasetError,
    TaskSpec,
    get_task,
    load_task,
    read_stored_task,
    register_task,
)
from nas_service.data.characters import load_char_task
from nas_service.ghn import GraphHyperNetwork
from nas_service.ghn.checkpoint import CheckpointError, bundled_checkpoint_path, load_ghn
from nas_service.ghn.tasks import MANIFEST, load_served
from nas_service.graph import ArchitectureGraph, to_module

from .cost import (
    ScoringBudget,
    ScoringCost,
    ScoringTooCostly,
    check_affordable,
    scoring_cost,
    short_training_cost,
)
from .evaluation import (
    READOUT_BATCH_SIZE,
    READOUT_ITERATIONS,
    READOUT_L2,
    accuracy,
    default_layout_accuracy,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from .fidelity import Fidelity, scaled_recalibration_batches
from .language import BPC_NAME, bits_per_character, validation_windows
from .protocol import (
    RANKING_NAME,
    READOUT,
    RECALIBRATION_BATCH_SIZE,
    RECALIBRATION_BATCHES,
    SCORE_SPLIT,
    SGD_BATCH_SIZE,
    SURROGATE_MODE,
    score_name,
)
from .ranking_head import RankingHead, head_for_checkpoint
from .short_training import (
    ShortTrainingResult,
    TrainingBatches,
    short_training_accuracy,
    training_batches,
)
from .task_fit import check_graph_fits_task
from .trainability import GRAD_NORM_IMAGES, grad_norm_batch, initial_grad_norm

log = logging.getLogger("nas_service.scoring")

CPU_EVAL_BATCH_SIZE = 100
"""Images per forward pass when scoring on a CPU: batches of 1,000 cost about 3x more CPU time
(activations of a cell network at 28x28 no longer fit in cache), smaller ones gain nothing."""
GRAD_NORM_CACHE_SIZE = 4096
"""Gradient norms a scorer remembers (a few dozen bytes each): enough for a search's rungs."""
SHORT_TRAINING_CACHE_SIZE = 4096
"""Short-training accuracies a scorer remembers (:meth:`ArchitectureScorer.short_training`)."""
DEVICE_EVAL_BATCH_SIZE = 1000
"""Images per forward pass on an accelerator, where bigger batches are cheaper per image."""


class _Recent:
    """The ``size`` most recently used values by key (callers hold the lock that guards it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Any, float] = OrderedDict()

    def get(self, key: Any) -> float | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: Any, value: float) -> None:
        self._values[key] = value
        if len(self._values) > self.size:
            self._values.popitem(last=False)


class TaskNotSupported(ValueError):
    """The loaded GHN was not trained for this task, nor adapted to it."""


@dataclass(frozen=True)
class AdaptedSource:
    """Where a scorer finds the GHN adapted to registered tasks (:mod:`nas_service.ghn.tasks`)
    and those tasks' data: it serves the adapted set once one exists, and picks up a newer one
    before it scores (:meth:`ArchitectureScorer.refresh`)."""

    ghn_dir: Path
    tasks_dir: Path
    base_sha256: str
    """The checkpoint the scorer was loaded from: an adapted set of another GHN is ignored."""


@dataclass(frozen=True)
class ScoredGraph:
    """One graph's score, its predicted (and recalibrated) state and where the time went."""

    graph: ArchitectureGraph
    accuracy: float
    """The score: top-1 accuracy of an image task; validation bits per character of a
    character task (``name`` ``predicted-bpc``, lower is better)."""
    images: int
    """Validation images (windows of a character task) the score was taken on."""
    state: dict[str, torch.Tensor]  # to_module(graph).state_dict() keys, CPU tensors
    timings: dict[str, float]  # seconds: "predict" (its share of the batch), "score"
    name: str = score_name(READOUT)
    """Which score ``accuracy`` is (:func:`~nas_service.scoring.protocol.score_name`)."""
    ranking: dict[str, Any] | None = None
    """The ranking head's estimate of trained accuracy (``{"value", "name", "target",
    "kendall_tau"}``); ``None`` when the GHN has no ranking head."""

    def score_record(self, recalibration_images: int) -> dict[str, Any]:
        """The ``scores`` JSON stored with the architecture and returned by the API."""
        record = {"value": self.accuracy, "name": self.name, "split": SCORE_SPLIT,
                  "images": self.images, "recalibration_images": recalibration_images}
        if self.ranking is not None:
            record["ranking"] = self.ranking
        return record


def ranking_value(scores: dict[str, Any]) -> float:
    """What searches rank an architecture by, higher being better: the ranking head's estimate
    of its trained accuracy when the GHN has a ranking head (it ranks better than the surrogate
    accuracy alone, ``docs/evaluation.md``), else the surrogate accuracy itself; for a character
    task, minus the validation bits per character (``predicted-bpc``), so that the best
    candidate of a search, the largest value, is the one with the lowest bpc."""
    ranking = scores.get("ranking")
    if ranking:
        return float(ranking["value"])
    if scores.get("name") == BPC_NAME:
        return -float(scores["value"])
    return float(scores["value"])


@dataclass
class _TaskTensors:
    spec: TaskSpec
    val_images: torch.Tensor  # (N, C, H, W) normalised, on the GHN's device; (N, T) token ids
    val_labels: torch.Tensor  # (N,); (N, T) next tokens of a character task
    recalibration: list[torch.Tensor] = field(default_factory=list)  # images, (B, C, H, W)
    recalibration_labels: list[torch.Tensor] = field(default_factory=list)  # (B,)
    grad_norm_batch: tuple[torch.Tensor, torch.Tensor] | None = None
    """Training images and labels of the gradient norm at initialisation (default layout),
    when the ranking head reads it (:mod:`~.trainability`)."""


def score_version(checkpoint_sha256: str, eval_images: int | None,
                  recalibration_batches: int, recalibration_batch_size: int,
                  ranking_head: RankingHead | None = None, readout: bool = READOUT,
                  channels_last: bool = False) -> str:
    """16 hex digits naming how scores are made: the GHN checkpoint (its SHA-256), the score,
    the validation images, the recalibration (batch-norm statistics; activations of networks
    without batch norm; the classifier's readout), the layout the networks run in
    (channels-last on a CPU: the recalibration's results differ in their last bits) and the
    ranking head, if any."""
    protocol = (f"{checkpoint_sha256}|{score_name(readout)}|{SCORE_SPLIT}"
                f"|images={eval_images or 'all'}"
                f"|recalibration={recalibration_batches}x{recalibration_batch_size}"
                f"|bn-free=normalize-activations")
    if readout:
        protocol += (f"|readout=logistic(l2={READOUT_L2},lbfgs={READOUT_ITERATIONS})"
                     + _readout_pass(recalibration_batches))
    if channels_last:
        protocol += "|layout=channels-last"
    if ranking_head is not None:
        head = json.dumps(ranking_head.to_dict(), sort_keys=True)
        protocol += f"|{RANKING_NAME}={hashlib.sha256(head.encode()).hexdigest()}"
    return hashlib.sha256(protocol.encode()).hexdigest()[:16]


def _readout_pass(recalibration_batches: int) -> str:
    """What :func:`score_version` adds when the readout reads its features off the
    recalibration's own pass (one recalibration batch: ``recalibrate(..., one_pass=True)``)."""
    return "|readout-features=recalibration-pass" if recalibration_batches == 1 else ""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArchitectureScorer:
    """The GHN of this process, the task data it scores on, and the lock that serialises them.

    ``ghn_version`` identifies the scores this scorer produces (:func:`score_version`: the GHN's
    checkpoint and the scoring settings): stored with every architecture and part of the
    architecture cache's key, so a score says which GHN produced it, and changing the GHN or
    ``NAS_EVAL_IMAGES`` scores graphs anew instead of serving scores taken another way.
    """

    def __init__(self, ghn: GraphHyperNetwork, *, ghn_version: str,
                 ghn_path: str | None = None, eval_images: int | None = None,
                 recalibration_batches: int = RECALIBRATION_BATCHES,
                 recalibration_batch_size: int = RECALIBRATION_BATCH_SIZE,
                 data_root: str | None = None, ranking_head: RankingHead | None = None,
                 budget: ScoringBudget | None = None, readout: bool = READOUT,
                 adapted: AdaptedSource | None = None) -> None:
        self.ghn = ghn.eval()
        self.adapted = adapted
        self._served: tuple[int, int] | None = None  # (mtime_ns, size) of the manifest read
        self._base_version = ghn_version
        self.budget = budget or ScoringBudget()
        self.readout = readout
        self.ranking_head = ranking_head
        self.ghn_version = ghn_version
        self.ghn_path = ghn_path
        self.eval_images = eval_images
        self.recalibration_batches = recalibration_batches
        self.recalibration_batch_size = recalibration_batch_size
        self.data_root = data_root
        self.lock = threading.Lock()
        self._tasks: dict[str, _TaskTensors] = {}
        self._tasks_lock = threading.Lock()
        self._full: ArchitectureScorer | None = None  # set on the views of at_fidelity
        self.channels_last = self.device.type == "cpu"
        """Whether networks and images run in the channels-last layout (on a CPU; see the
        module docstring)."""
        self._fidelities: dict[Fidelity, ArchitectureScorer] = {}
        self._grad_norms = _Recent(GRAD_NORM_CACHE_SIZE)
        """Gradient norms at initialisation by (task, graph content hash), shared with the
        views of :meth:`at_fidelity`: a candidate promoted through rungs pays for it once."""
        self._training_batches: dict[str, TrainingBatches] = {}
        """The images short trainings read, by task (:meth:`short_training`)."""
        self._short_trainings = _Recent(SHORT_TRAINING_CACHE_SIZE)
        """Accuracies of short trainings by (task, graph content hash, steps, validation
        images, recalibration batches, training parts): deterministic, so a graph an evolution
        proposes again, or another job samples, is not trained again."""

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | None = None,
             eval_images: int | None = None,
             recalibration_batches: int = RECALIBRATION_BATCHES,
             recalibration_batch_size: int = RECALIBRATION_BATCH_SIZE,
             budget: ScoringBudget | None = None,
             readout: bool = READOUT,
             adapted_dir: str | Path | None = None,
             tasks_dir: str | Path | None = None) -> ArchitectureScorer:
        """A scorer around the GHN checkpoint at ``path`` (``None``: the bundled one), with the
        ranking head that lies beside it when that head was fit on this very checkpoint
        (:func:`~nas_service.scoring.ranking_head.head_for_checkpoint`). With ``adapted_dir``
        (and ``tasks_dir``, where registered tasks' data lies), it serves the GHN adapted to
        registered tasks there, once there is one adapted from this checkpoint.

        Raises :class:`nas_service.ghn.checkpoint.CheckpointError` when the checkpoint is
        missing or broken, :class:`~nas_service.scoring.ranking_head.RankingHeadError` when
        its ranking head file is.
        """
        resolved = Path(path) if path is not None else bundled_checkpoint_path()
        ghn = load_ghn(resolved, device)
        sha256 = file_sha256(resolved)
        head = head_for_checkpoint(resolved, sha256, score_name(readout))
        version = score_version(sha256, eval_images, recalibration_batches,
                                recalibration_batch_size, head, readout,
                                channels_last=ghn.device.type == "cpu")
        adapted = None
        if adapted_dir is not None:
            adapted = AdaptedSource(Path(adapted_dir), Path(tasks_dir or adapted_dir), sha256)
        scorer = cls(ghn, ghn_version=version, ghn_path=str(resolved), eval_images=eval_images,
                     recalibration_batches=recalibration_batches,
                     recalibration_batch_size=recalibration_batch_size, ranking_head=head,
                     budget=budget, readout=readout, adapted=adapted)
        scorer.refresh()
        return scorer

    @property
    def base_version(self) -> str:
        """The version of this scorer's checkpoint and protocol before any adapted GHN it may
        serve (:meth:`refresh`): two scorers that agree on it serve the same adapted sets."""
        return self._base_version

    def sibling(self, budget: ScoringBudget | None = None) -> ArchitectureScorer:
        """A scorer of the same GHN, protocol and task data with its own copy of the GHN and its
        own lock, so that two callers (the API and a worker thread) score at the same time
        instead of one waiting for the other; ``budget`` replaces this one's."""
        twin = ArchitectureScorer(copy.deepcopy(self.ghn), ghn_version=self.ghn_version,
                                  ghn_path=self.ghn_path, eval_images=self.eval_images,
                                  recalibration_batches=self.recalibration_batches,
                                  recalibration_batch_size=self.recalibration_batch_size,
                                  data_root=self.data_root, ranking_head=self.ranking_head,
                                  budget=budget or self.budget, readout=self.readout,
                                  adapted=self.adapted)
        twin._tasks, twin._tasks_lock = self._tasks, self._tasks_lock  # read-only tensors
        twin._training_batches, twin._short_trainings = (self._training_batches,
                                                         self._short_trainings)
        twin._served, twin._base_version = self._served, self._base_version
        return twin

    # ---- the adapted GHN ---------------------------------------------------------------------

    def refresh(self) -> bool:
        """Serve the newest GHN adapted to registered tasks, when it changed since this scorer
        last looked (one ``stat`` when it did not); returns whether the GHN changed. Scores of
        the adapted GHN have their own ``ghn_version`` (the base checkpoint's, the adapted
        generation and its tasks), so the architecture cache never mixes them with another
        GHN's. An adapted set of another base checkpoint, or a broken one, is not served."""
        full = self._full or self
        source = full.adapted
        if source is None:
            return False
        try:
            stat = (source.ghn_dir / MANIFEST).stat()
        except FileNotFoundError:
            return False
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == full._served:
            return False
        with full.lock:
            if seen == full._served:
                return False
            full._served = seen
            try:
                loaded = load_served(source.ghn_dir, full.device)
            except (CheckpointError, OSError, ValueError) as e:
                log.warning("not serving the adapted GHN in %s: %s", source.ghn_dir, e)
                return False
            if loaded is None:
                return False
            ghn, manifest = loaded
            if manifest.get("base") != source.base_sha256:
                log.warning("not serving the adapted GHN in %s: it was adapted from another "
                            "checkpoint", source.ghn_dir)
                return False
            for name in manifest.get("tasks", {}):
                try:
                    register_task(read_stored_task(source.tasks_dir / name))
                except DatasetError as e:
                    log.warning("adapted task %r has no usable data: %s", name, e)
            ghn.task = self.task
            ghn.training_record = getattr(ghn, "training_record", {})
            full.ghn = ghn.eval()
            protocol = (f"{full._base_version}|adapted={manifest['generation']}"
                        f"|tasks={','.join(sorted(manifest.get('tasks', {})))}"
                        f"|ghn={manifest['ghn']}")
            full.ghn_version = hashlib.sha256(protocol.encode()).hexdigest()[:16]
            full._fidelities.clear()
        return True

    def tasks(self) -> list[str]:
        """Every task this scorer scores: the GHN's own, then those it was adapted to."""
        own = [self.task] if self.task else []
        return own + sorted(self.ghn.task_embeddings)

    def full_images(self, task: str | TaskSpec) -> int:
        """Validation images of a full-fidelity score of ``task`` (``eval_images``, or the
        whole split when that is ``None``)."""
        full = self._full or self
        return len(full.task_tensors(task).val_labels)

    def fidelity_of_images(self, images: int, task: str | TaskSpec) -> Fidelity:
        """The fidelity of a score on ``images`` validation images: the recalibration scaled
        alike (:func:`~nas_service.scoring.fidelity.scaled_recalibration_batches`)."""
        full = self._full or self
        full_images = full.full_images(task)
        return Fidelity(min(images, full_images), scaled_recalibration_batches(
            images, full_images, full.recalibration_batches))

    def at_fidelity(self, fidelity: Fidelity, task: str | TaskSpec) -> ArchitectureScorer:
        """A view of this scorer that scores at ``fidelity``: the same GHN, lock, ranking head
        and task data, cut to the first ``fidelity.images`` validation images and the first
        ``fidelity.recalibration_batches`` recalibration batches. Its ``ghn_version`` names the
        fidelity too, so the architecture cache never serves a cheaper score as a full one; at
        the full fidelity it is this scorer itself."""
        full = self._full or self
        if (fidelity.images >= full.full_images(task)
                and fidelity.recalibration_batches >= full.recalibration_batches):
            return full
        with full._tasks_lock:
            view = full._fidelities.get(fidelity)
            if view is None:
                protocol = (f"{full.ghn_version}|images={fidelity.images}"
                            f"|recalibration={fidelity.recalibration_batches}"
                            f"x{full.recalibration_batch_size}"
                            + (_readout_pass(fidelity.recalibration_batches)
                               if full.readout else ""))
                view = ArchitectureScorer(
                    full.ghn, ghn_version=hashlib.sha256(protocol.encode()).hexdigest()[:16],
                    ghn_path=full.ghn_path, eval_images=fidelity.images,
                    recalibration_batches=fidelity.recalibration_batches,
                    recalibration_batch_size=full.recalibration_batch_size,
                    data_root=full.data_root, ranking_head=full.ranking_head,
                    budget=full.budget, readout=full.readout)
                view.lock = full.lock  # one GHN, one lock
                view._full = full
                full._fidelities[fidelity] = view
        return view

    # ---- what this scorer can do -----------------------------------------------------------

    @property
    def task(self) -> str | None:
        """The task the GHN was trained on (others it scores were added by adaptation)."""
        return getattr(self.ghn, "task", None)

    @property
    def device(self) -> torch.device:
        return self.ghn.device

    @property
    def recalibration_images(self) -> int:
        return self.recalibration_batches * self.recalibration_batch_size

    def supports(self, task: str) -> bool:
        try:
            name = get_task(task).name
        except DatasetError:
            return False
        if name in self.ghn.task_embeddings:
            return True
        try:
            return name == get_task(self.task or "").name
        except DatasetError:
            return False

    def check_task(self, task: str) -> TaskSpec:
        """The spec of ``task``; :class:`TaskNotSupported` unless this GHN scores it (the
        newest adapted GHN is looked for first: :meth:`refresh`)."""
        self.refresh()
        spec = get_task(task)  # DatasetError for unknown names
        if not self.supports(spec.name):
            raise TaskNotSupported(f"no hypernetwork is loaded for task {spec.name!r} "
                                   f"(scored: {', '.join(self.tasks()) or 'none'})")
        return spec

    def _embedding_task(self, spec: TaskSpec) -> str | None:
        """The name the GHN's task embedding has for ``spec`` (``None``: its own task)."""
        return spec.name if spec.name in self.ghn.task_embeddings else None

    def info(self) -> dict[str, Any]:
        """What is loaded, for ``GET /v1/hypernetworks``."""
        return {"task": self.task, "version": self.ghn_version, "path": self.ghn_path,
                "device": str(self.device), "tasks": self.tasks(),
                "parameters": sum(p.numel() for p in self.ghn.parameters()),
                "config": _jsonable(vars(self.ghn.config)),
                "training": getattr(self.ghn, "training_record", {}) or {},
                "score": {"name": score_name(self.readout), "split": SCORE_SPLIT,
                          "images": self.eval_images,
                          "recalibration_images": self.recalibration_images,
                          "ranking": None if self.ranking_head is None else {
                              **self._ranking_fields(),
                              "architectures": self.ranking_head.architectures,
                              "features": list(self.ranking_head.features)}}}

    def _ranking(self, graph: ArchitectureGraph, value: float, data: _TaskTensors,
                 grad_norm_batch_size: int) -> dict[str, Any]:
        """The ranking record of ``graph`` scored ``value``: the head's estimate, what it read
        besides the score (the gradient norm taken in batches of ``grad_norm_batch_size``, as
        admission control sized them), and what the head says of itself."""
        head = self.ranking_head
        assert head is not None
        if not head.uses_grad_norm:
            return {"value": head.predict(value, graph.num_parameters), **self._ranking_fields()}
        assert data.grad_norm_batch is not None
        cache = (self._full or self)._grad_norms  # under self.lock, which the views share
        key = (data.spec.name, graph.content_hash())
        gradient = cache.get(key)
        if gradient is None:
            gradient = initial_grad_norm(graph, *data.grad_norm_batch,
                                         batch_size=grad_norm_batch_size)
            cache.put(key, gradient)
        return {"value": head.predict(value, graph.num_parameters, gradient),
                "grad_norm": gradient if math.isfinite(gradient) else None,
                **self._ranking_fields()}

    def _ranking_fields(self) -> dict[str, Any]:
        """What every ranking record says of the head besides its value."""
        head = self.ranking_head
        assert head is not None
        return {"name": RANKING_NAME, "target": head.target, "kendall_tau": head.kendall_tau,
                "measured_on": head.measured_on}

    # ---- scoring -----------------------------------------------------------------------------

    def task_tensors(self, task: str | TaskSpec) -> _TaskTensors:
        """The evaluation and recalibration tensors of ``task``, loaded once per process.

        A task name is checked (:meth:`check_task`); a :class:`TaskSpec` is taken as what
        :meth:`check_task` returned."""
        spec = task if isinstance(task, TaskSpec) else self.check_task(task)
        if self._full is not None:
            return self._cut_task_tensors(spec)
        with self._tasks_lock:
            cached = self._tasks.get(spec.name)
            if cached is not None:
                return cached
            if spec.is_language_model:
                tensors = self._language_tensors(spec)
                self._tasks[spec.name] = tensors
                return tensors
            data = load_task(spec.name, self.data_root)
            x, y = data.tensors(SCORE_SPLIT, device=self.device)
            if self.eval_images is not None:
                x, y = x[:self.eval_images], y[:self.eval_images]
            recalibration = recalibration_batches(data, self.device,
                                                  batches=self.recalibration_batches,
                                                  batch_size=self.recalibration_batch_size)
            layout = _layout(self.channels_last)
            tensors = _TaskTensors(spec, layout(x.contiguous()), y.contiguous(),
                                   [layout(xb) for xb, _ in recalibration],
                                   [yb for _, yb in recalibration])
            if self.ranking_head is not None and self.ranking_head.uses_grad_norm:
                tensors.grad_norm_batch = grad_norm_batch(data, self.device)
            self._tasks[spec.name] = tensors
            return tensors

    def _language_tensors(self, spec: TaskSpec) -> _TaskTensors:
        """A character task's validation windows (``spec.val_size``, or ``eval_images`` when
        fewer): no recalibration, since the language models have no batch norm and their
        decoder is scored as predicted (:mod:`~nas_service.scoring.language`)."""
        corpus = load_char_task(spec, self.data_root)
        count = spec.val_size if self.eval_images is None else min(self.eval_images,
                                                                    spec.val_size)
        x, y = validation_windows(getattr(corpus, SCORE_SPLIT), spec.input_shape[0], count)
        return _TaskTensors(spec, x.to(self.device), y.to(self.device))

    def _cut_task_tensors(self, spec: TaskSpec) -> _TaskTensors:
        assert self._full is not None
        full = self._full.task_tensors(spec)
        with self._tasks_lock:
            cached = self._tasks.get(spec.name)
            if cached is None:
                images, batches = self.eval_images, self.recalibration_batches
                cached = _TaskTensors(spec, full.val_images[:images], full.val_labels[:images],
                                      full.recalibration[:batches],
                                      full.recalibration_labels[:batches],
                                      full.grad_norm_batch)
                self._tasks[spec.name] = cached
            return cached

    @property
    def eval_batch_size(self) -> int:
        """Images per forward pass of the evaluation on this scorer's device."""
        return CPU_EVAL_BATCH_SIZE if self.device.type == "cpu" else DEVICE_EVAL_BATCH_SIZE

    def score(self, graphs: Sequence[ArchitectureGraph], task: str | TaskSpec
              ) -> list[ScoredGraph | Exception]:
        """Scores ``graphs`` on ``task`` (a name, or the spec :meth:`check_task` returned): one
        GHN forward pass for all of them, then one evaluation each. Each entry is the graph's
        :class:`ScoredGraph` or the exception that stopped it (a graph that does not fit the task:
        :class:`~nas_service.scoring.task_fit.GraphDoesNotFitTask`); exceptions about the task
        itself (unknown, not supported, no data) are raised instead, since no graph could be
        scored."""
        if not graphs:
            return []
        self.refresh()
        data = self.task_tensors(task)
        results: list[ScoredGraph | Exception | None] = [
            _misfit(graph, data.spec) or self._unaffordable(graph, data) for graph in graphs]
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return results  # type: ignore[return-value]
        with self.lock, torch.no_grad():
            started = time.perf_counter()
            batch = [graphs[i] for i in todo]
            conditioned = self._embedding_task(data.spec)
            try:
                predicted: list[dict[str, torch.Tensor] | Exception] = list(
                    self.ghn.predict(batch, task=conditioned))
            except Exception:
                # One graph spoiled the batch: predict them one by one to find out which.
                predicted = [self._predict_one(g, conditioned) for g in batch]
            predict_seconds = (time.perf_counter() - started) / len(batch)
            for i, params in zip(todo, predicted, strict=True):
                if isinstance(params, Exception):
                    results[i] = params
                    continue
                try:
                    results[i] = self._evaluate(graphs[i], params, data, predict_seconds)
                except Exception as e:  # noqa: BLE001 - reported as this graph's failure
                    results[i] = e
        return results  # type: ignore[return-value]

    def short_training(self, graph: ArchitectureGraph, task: str | TaskSpec,
                       steps: int) -> ShortTrainingResult:
        """``graph``'s accuracy after ``steps`` SGD steps from its default initialisation
        (:mod:`~.short_training`), on this scorer's validation images and recalibration
        batches: what a search job ranked by short training ranks by. Not under the GHN's lock:
        it does not touch the GHN. Raises :class:`ScoringTooCostly` when it passes the budget,
        :class:`TaskNotSupported` for a character task, ``ValueError`` for a graph that does
        not fit the task."""
        data = self.task_tensors(task)
        spec = data.spec
        misfit = _misfit(graph, spec)
        if misfit is not None:
            raise misfit
        cost = self.short_training_cost(graph, spec, steps)
        check_affordable(cost, self.budget, "a short training of")
        full = self._full or self
        key = (spec.name, graph.content_hash(), steps, len(data.val_labels),
               len(data.recalibration), cost.train_batch_size)
        with full._tasks_lock:
            remembered = full._short_trainings.get(key)
        if remembered is not None:
            return ShortTrainingResult(remembered, steps, 0.0)
        batches = self._short_training_batches(spec, steps)
        started = time.perf_counter()
        value = short_training_accuracy(graph, batches, spec, data.recalibration,
                                        data.val_images, data.val_labels, steps=steps,
                                        eval_batch_size=cost.eval_batch_size,
                                        train_batch_size=cost.train_batch_size,
                                        device=self.device)
        with full._tasks_lock:
            full._short_trainings.put(key, value)
        return ShortTrainingResult(value, steps, time.perf_counter() - started)

    def short_training_cost(self, graph: ArchitectureGraph, task: str | TaskSpec,
                            steps: int) -> ScoringCost:
        """What :meth:`short_training` of ``graph`` costs under this scorer's budget (its
        ``train_batch_size``: the parts a step's batch is accumulated in)."""
        data = self.task_tensors(task)
        if data.spec.is_language_model:
            raise TaskNotSupported(f"short training ranks image classifiers; "
                                   f"{data.spec.name!r} is a character task")
        return short_training_cost(
            graph, steps=steps, batch_size=SGD_BATCH_SIZE, eval_images=len(data.val_labels),
            eval_batch_size=self.eval_batch_size,
            recalibration_images=sum(len(x) for x in data.recalibration),
            recalibration_batch_size=self.recalibration_batch_size, budget=self.budget)

    def _short_training_batches(self, spec: TaskSpec, steps: int) -> TrainingBatches:
        """The training batches of ``steps`` steps on ``spec``, loaded once per process and
        task (a longer prefix kept for shorter trainings)."""
        full = self._full or self  # the views of at_fidelity share the full scorer's
        with full._tasks_lock:
            held = full._training_batches.get(spec.name)
            if held is None or len(held.labels) < steps:
                held = training_batches(load_task(spec.name, full.data_root), steps, full.device)
                full._training_batches[spec.name] = held
            return held

    def cost(self, graph: ArchitectureGraph, data: _TaskTensors) -> ScoringCost:
        """What scoring ``graph`` on ``data`` costs under this scorer's protocol and budget."""
        return scoring_cost(graph, eval_images=len(data.val_labels),
                            eval_batch_size=self.eval_batch_size,
                            recalibration_batches=len(data.recalibration),
                            recalibration_batch_size=self.recalibration_batch_size,
                            readout_images=(len(data.recalibration) * self.recalibration_batch_size
                                            if self.readout else 0),
                            readout_batch_size=READOUT_BATCH_SIZE,
                            grad_norm_images=(GRAD_NORM_IMAGES if data.grad_norm_batch is not None
                                              and self._embedding_task(data.spec) is None
                                              else 0),
                            budget=self.budget)

    def check_affordable(self, graph: ArchitectureGraph, task: str | TaskSpec) -> ScoringCost:
        """The cost of scoring ``graph`` on ``task``; :class:`ScoringTooCostly` when it passes
        the budget."""
        cost = self.cost(graph, self.task_tensors(task))
        check_affordable(cost, self.budget)
        return cost

    def _unaffordable(self, graph: ArchitectureGraph, data: _TaskTensors) -> Exception | None:
        try:
            check_affordable(self.cost(graph, data), self.budget)
        except ScoringTooCostly as e:
            return e
        return None

    def _predict_one(self, graph: ArchitectureGraph, task: str | None
                     ) -> dict[str, torch.Tensor] | Exception:
        try:
            return self.ghn.predict([graph], task=task)[0]
        except Exception as e:  # noqa: BLE001 - reported as this graph's failure
            return e

    def _evaluate(self, graph: ArchitectureGraph, params: dict[str, torch.Tensor],
                  data: _TaskTensors, predict_seconds: float) -> ScoredGraph:
        started = time.perf_counter()
        net = load_parameters(to_module(graph, initialize=False, device=self.device), params)
        if data.spec.is_language_model:  # bits per character: lower is better, no ranking head
            value = bits_per_character(net, data.val_images, data.val_labels)
            state = {k: v.detach().to("cpu").contiguous().clone()
                     for k, v in net.state_dict().items()}
            return ScoredGraph(graph=graph, accuracy=value, images=len(data.val_labels),
                               state=state, timings={"predict": predict_seconds,
                                                     "score": time.perf_counter() - started},
                               name=BPC_NAME)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        recalibrate(net, data.recalibration,
                    data.recalibration_labels if self.readout else None,
                    one_pass=len(data.recalibration) == 1)
        cost = self.cost(graph, data)
        if self.channels_last:
            value, _ = default_layout_accuracy(net, data.val_images, data.val_labels,
                                               batch_size=cost.eval_batch_size)
        else:
            value = accuracy(net, data.val_images, data.val_labels, bn_mode=SURROGATE_MODE,
                             batch_size=cost.eval_batch_size)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
        del net  # the ranking's gradient norm builds a network of its own
        ranking = None
        # The head maps the GHN's own task's scores to trained accuracy; not another task's.
        if self.ranking_head is not None and self._embedding_task(data.spec) is None:
            ranking = self._ranking(graph, value, data, cost.grad_norm_batch_size)
        return ScoredGraph(graph=graph, accuracy=value, images=len(data.val_labels), state=state,
                           timings={"predict": predict_seconds,
                                    "score": time.perf_counter() - started},
                           name=score_name(self.readout), ranking=ranking)


def _layout(channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a view does to its image tensors: channels-last copies of 4-d ones, or nothing."""
    if not channels_last:
        return lambda x: x
    return lambda x: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _misfit(graph: ArchitectureGraph, spec: TaskSpec) -> Exception | None:
    try:
        check_graph_fits_task(graph, spec)
    except ValueError as e:
        return e
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
