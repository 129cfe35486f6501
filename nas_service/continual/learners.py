"""Learning a sequence of tasks, and the standard measurements of what was kept.

A learner learns tasks one at a time (:meth:`ContinualLearner.learn`) and answers for any task
learned so far (:meth:`ContinualLearner.logits`). :func:`run_sequence` trains a learner on a
sequence and measures every learned task's test accuracy after every task; :func:`run_multitask`
is the upper bound (all tasks at once, the same number of training examples in all).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .baselines import WeightPenalty
from .errors import ContinualError
from .hypernetwork import TaskHypernetwork, output_regularizer, snapshot_outputs
from .targets import TargetNetwork, parameter_shapes
from .tasks import ContinualTask

__all__ = [
    "ContinualLearner",
    "HypernetworkLearner",
    "RegularizedLearner",
    "SequenceResult",
    "StepCallback",
    "TrainingSettings",
    "accuracy",
    "run_multitask",
    "run_sequence",
    "task_inferred_accuracy",
]

StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class TrainingSettings:
    """Steps of Adam per task, the batch size and the learning rate; ``seed`` fixes the
    batches and every sampled quantity (the networks' initialisation is the caller's)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ContinualError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ContinualError(f"lr must be positive, got {self.lr!r}")


class ContinualLearner:
    """Learns task ``0``, then ``1``, …; never sees an earlier task's data again."""

    name = "learner"

    def learn(self, task_index: int, task: ContinualTask, settings: TrainingSettings,
              generator: torch.Generator, on_step: StepCallback | None = None) -> None:
        raise NotImplementedError

    def logits(self, task_index: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, *input)`` → logits ``(B, classes of task)`` with the task given."""
        raise NotImplementedError

    def parameter_count(self) -> dict[str, float]:
        raise NotImplementedError


class HypernetworkLearner(ContinualLearner):
    """Continual learning with a task-conditioned hypernetwork (von Oswald et al., 2020).

    Task ``t`` adds an embedding ``e_t``, snapshots ``h(e_t', Θ*)`` for the earlier tasks, and
    trains ``Θ`` and ``e_t`` with Adam on ``L_task + output_regularizer`` (earlier embeddings
    frozen). ``target`` has one head: every task's weights, head included, are generated.
    """

    def __init__(self, hnet: TaskHypernetwork, target: TargetNetwork, beta: float,
                 name: str = "hnet") -> None:
        if len(target.heads) != 1:
            raise ContinualError("the target network of a hypernetwork has exactly one head")
        if dict(parameter_shapes(target)) != dict(hnet.layout.shapes):
            raise ContinualError("the hypernetwork was built for another target network")
        if not beta >= 0:
            raise ContinualError(f"beta must be >= 0, got {beta!r}")
        self.hnet, self.target, self.beta, self.name = hnet, target, float(beta), name

    def learn(self, task_index: int, task: ContinualTask, settings: TrainingSettings,
              generator: torch.Generator, on_step: StepCallback | None = None) -> None:
        if task_index != self.hnet.num_tasks:
            raise ContinualError(f"tasks are learned in order: expected task "
                                 f"{self.hnet.num_tasks}, got {task_index}")
        if task.classes != self.target.classes:
            raise ContinualError(f"{task.name} has {task.classes} classes, the target network "
                                 f"{self.target.classes}")
        self.hnet.add_task(generator)
        earlier = list(range(task_index))
        for t in earlier:
            self.hnet.task_embeddings[t].requires_grad_(False)
        targets = snapshot_outputs(self.hnet, earlier)  # (t−1, P)
        optimizer = torch.optim.Adam(
            [*self.hnet.hypernetwork_parameters(), self.hnet.task_embeddings[task_index]],
            lr=settings.lr)
        self.hnet.train()
        for step in range(settings.steps):
            x, y = task.sample(settings.batch_size, generator)
            weights = self.hnet.weights(task_index)
            loss = F.cross_entropy(functional_call(self.target, weights, (x,)), y)
            loss = loss + output_regularizer(self.hnet, earlier, targets, self.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step + 1)

    @torch.no_grad()
    def logits(self, task_index: int, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.target, self.hnet.weights(task_index), (x,))

    def parameter_count(self) -> dict[str, float]:
        return dict(self.hnet.parameter_count())


class RegularizedLearner(ContinualLearner):
    """A network trained directly with Adam on ``L_task + penalty``: sequential fine-tuning
    without a penalty, else EWC, online EWC or SI (:mod:`~nas_service.continual.baselines`).

    Task ``t`` uses head ``t`` (multi-head, task given); with ``shared_head`` every task uses
    head 0, so a later task can overwrite what an earlier one needs even in the last layer.
    """

    def __init__(self, model: TargetNetwork, penalty: WeightPenalty | None = None, *,
                 shared_head: bool = False) -> None:
        self.model, self.penalty, self.shared_head = model, penalty, shared_head
        self.name = "finetune" if penalty is None else penalty.name

    def _head(self, task_index: int) -> int:
        return 0 if self.shared_head else task_index

    def learn(self, task_index: int, task: ContinualTask, settings: TrainingSettings,
              generator: torch.Generator, on_step: StepCallback | None = None) -> None:
        if not 0 <= self._head(task_index) < len(self.model.heads):
            raise ContinualError(f"task {task_index} has no head: the network has "
                                 f"{len(self.model.heads)}")
        if task.classes != self.model.classes:
            raise ContinualError(f"{task.name} has {task.classes} classes, the network's heads "
                                 f"{self.model.classes}")
        optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        if self.penalty is not None:
            self.penalty.begin_task(self.model)
        self.model.train()
        for step in range(settings.steps):
            x, y = task.sample(settings.batch_size, generator)
            loss = F.cross_entropy(self.model(x, self._head(task_index)), y)
            if self.penalty is not None:
                loss = loss + self.penalty.loss(self.model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.penalty is not None:
                self.penalty.before_step(self.model)
            optimizer.step()
            if self.penalty is not None:
                self.penalty.after_step(self.model)
            if on_step is not None:
                on_step(step + 1)
        if self.penalty is not None:
            self.penalty.end_task(self.model, self._head(task_index), task, generator)

    @torch.no_grad()
    def logits(self, task_index: int, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x, self._head(task_index))

    def parameter_count(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.model.parameters())
        return {"network": n}


@torch.no_grad()
def accuracy(learner: ContinualLearner, task_index: int, task: ContinualTask) -> float:
    """Test accuracy on ``task`` with its identity given, in ``[0, 1]``."""
    correct = 0
    for x, y in task.test_batches():
        correct += int((learner.logits(task_index, x).argmax(-1) == y).sum())
    return correct / len(task.test_y)


@torch.no_grad()
def task_inferred_accuracy(learner: ContinualLearner, tasks: Sequence[ContinualTask]) -> float:
    """Accuracy when the task is not given: each test image (of every task) is run through
    every task's weights, the task whose prediction has the lowest entropy
    ``H = −Σ_k p_k log p_k`` is taken (the paper's HNET+ENT), and the image counts as correct
    only if both that task and its class are right."""
    correct = total = 0
    for true_task, task in enumerate(tasks):
        for x, y in task.test_batches():
            entropies, predictions = [], []
            for t in range(len(tasks)):
                probs = F.softmax(learner.logits(t, x), -1)  # x as its own task presents it
                entropies.append(-(probs * probs.clamp_min(1e-12).log()).sum(-1))
                predictions.append(probs.argmax(-1))
            chosen = torch.stack(entropies).argmin(0)  # (B,)
            predicted = torch.stack(predictions).gather(0, chosen[None])[0]
            correct += int(((chosen == true_task) & (predicted == y)).sum())
            total += len(y)
    return correct / total


@dataclass
class SequenceResult:
    """What a learner kept. ``accuracy[i][j]``: test accuracy (``[0, 1]``) of task ``j`` after
    learning tasks ``0..i`` (``j <= i``); the multi-task bound has one row, after all tasks."""

    method: str
    accuracy: list[list[float]]
    seconds: float
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> list[float]:
        return self.accuracy[-1]

    @property
    def average(self) -> float:
        """Mean accuracy over all tasks after the last one."""
        return sum(self.final) / len(self.final)

    @property
    def task1_after_each(self) -> list[float]:
        return [row[0] for row in self.accuracy]

    @property
    def task1_forgetting(self) -> float:
        """Task 1's accuracy right after learning it minus after the last task."""
        return self.accuracy[0][0] - self.accuracy[-1][0]

    @property
    def forgetting(self) -> float:
        """Mean over tasks ``1..T−1`` of (best accuracy ever reached − final accuracy)."""
        if len(self.accuracy) < 2:
            return 0.0
        last = len(self.accuracy) - 1
        drops = [max(self.accuracy[i][j] for i in range(j, last + 1)) - self.accuracy[last][j]
                 for j in range(last)]
        return sum(drops) / len(drops)

    def to_json(self) -> dict[str, object]:
        r = lambda v: round(100 * v, 2)  # noqa: E731 - percentages with two decimals
        out: dict[str, object] = {
            "method": self.method,
            "average_accuracy": r(self.average),
            "final_accuracy": [r(a) for a in self.final],
            "seconds": round(self.seconds, 1),
            "parameters": self.parameters,
        }
        if len(self.accuracy) > 1:
            out.update({"task1_after_each": [r(a) for a in self.task1_after_each],
                        "task1_forgetting": r(self.task1_forgetting),
                        "forgetting": r(self.forgetting),
                        "accuracy_matrix": [[r(a) for a in row] for row in self.accuracy]})
        return out


def run_sequence(learner: ContinualLearner, tasks: Sequence[ContinualTask],
                 settings: TrainingSettings, on_step: StepCallback | None = None
                 ) -> SequenceResult:
    """Learn ``tasks`` in order and measure every learned task after each one."""
    if not tasks:
        raise ContinualError("a sequence needs at least one task")
    generator = torch.Generator().manual_seed(settings.seed)
    rows: list[list[float]] = []
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        learner.learn(i, task, settings, generator, on_step)
        rows.append([accuracy(learner, j, tasks[j]) for j in range(i + 1)])
    return SequenceResult(learner.name, rows, time.perf_counter() - start,
                          learner.parameter_count())


class _JointLearner(RegularizedLearner):
    name = "multitask"


def run_multitask(model: TargetNetwork, tasks: Sequence[ContinualTask],
                  settings: TrainingSettings, on_step: StepCallback | None = None
                  ) -> tuple[SequenceResult, ContinualLearner]:
    """The upper bound: ``model`` (one head per task) trained on all tasks at once for
    ``steps · len(tasks)`` steps; each step's batch holds ``⌈batch_size / T⌉`` images of every
    task, so it sees as many images as a sequential learner in all. Returns the result (one
    row) and the trained learner."""
    if not tasks:
        raise ContinualError("a sequence needs at least one task")
    if len(model.heads) != len(tasks):
        raise ContinualError(f"multi-task training needs one head per task: {len(tasks)} "
                             f"tasks, {len(model.heads)} heads")
    generator = torch.Generator().manual_seed(settings.seed)
    per_task = math.ceil(settings.batch_size / len(tasks))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start = time.perf_counter()
    model.train()
    for step in range(settings.steps * len(tasks)):
        loss = torch.zeros(())
        for t, task in enumerate(tasks):
            x, y = task.sample(per_task, generator)
            loss = loss + F.cross_entropy(model(x, t), y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(tasks)).backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    learner = _JointLearner(model)
    row = [accuracy(learner, j, task) for j, task in enumerate(tasks)]
    return (SequenceResult("multitask", [row], time.perf_counter() - start,
                           learner.parameter_count()), learner)
