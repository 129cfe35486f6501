"""The Fashion-MNIST continual-learning benchmarks, as one definition shared by
``bench/continual_bench.py`` and ``nas-service continual-bench``.

Both benchmarks use the same target network (MLP 784-100-100, one output head per task) and
the same budget for every method (``TrainingSettings.steps`` Adam steps per task):

* ``split``: 5 tasks of 2 classes ((0,1), (2,3), …), multi-head, task given; the final
  networks are also scored with the task *inferred* by prediction entropy;
* ``permuted``: 10 tasks of all 10 classes, task 1 unpermuted, the others under fixed pixel
  permutations (seed 0), task given;
* ``split-cnn``: ``split`` with the small CNN (:class:`TargetCNN`, default sizes) as the target
  network.
"""

from __future__ import annotations

from typing import Any

import torch

from nas_service.data import TaskData

from .baselines import EWC, OnlineEWC, SynapticIntelligence, WeightPenalty
from .errors import ContinualError
from .hypernetwork import BETA_DEFAULTS, ChunkedHyperMLP, HyperMLP, TaskHypernetwork
from .learners import (
    ContinualLearner,
    HypernetworkLearner,
    RegularizedLearner,
    SequenceResult,
    StepCallback,
    TrainingSettings,
    run_multitask,
    run_sequence,
    task_inferred_accuracy,
)
from .targets import TargetCNN, TargetMLP, TargetNetwork, parameter_shapes
from .tasks import ContinualTask, permuted_tasks, split_tasks

__all__ = [
    "BASELINES",
    "BASELINE_STRENGTH",
    "BENCHMARKS",
    "DEFAULT_STEPS",
    "HYPERNETWORKS",
    "TARGET_DESCRIPTIONS",
    "TARGET_HIDDEN",
    "benchmark_methods",
    "benchmark_tasks",
    "run_method",
]

BENCHMARKS = ("split", "permuted", "split-cnn")
TARGET_HIDDEN = (100, 100)
_SEQUENCE = {"split": "split", "permuted": "permuted", "split-cnn": "split"}  # β, tasks
#: Adam steps per task of each benchmark's recorded run (the CNN is slow on a CPU).
DEFAULT_STEPS = {"split": 600, "permuted": 600, "split-cnn": 300}
TARGET_DESCRIPTIONS = {
    "split": "MLP 784-100-100, one head per task",
    "permuted": "MLP 784-100-100, one head per task",
    "split-cnn": "CNN conv5x5(16)-maxpool-conv5x5(32)-maxpool-linear(64), one head per task",
}

#: Strengths of the regularisation baselines (EWC and online EWC: λ; SI: c), chosen by a few
#: short pilot runs (300–500 steps, the first 4 tasks), not by a validation sweep
#: (docs/continual.md says which).
BASELINE_STRENGTH: dict[str, dict[str, float]] = {
    "split": {"ewc": 1e4, "online-ewc": 1e4, "si": 1.0},
    "permuted": {"ewc": 1e2, "online-ewc": 1e2, "si": 1.0},
    "split-cnn": {"ewc": 1e4, "online-ewc": 1e4, "si": 1.0},
}

#: The hypernetworks of each benchmark: name → (class, keyword arguments). The default chunked
#: one is compressive (fewer trainable numbers than one target network); the full ones and the
#: large chunked one are not.
HYPERNETWORKS: dict[str, dict[str, tuple[type[TaskHypernetwork], dict[str, Any]]]] = {
    "split": {
        "hnet-chunked": (ChunkedHyperMLP, {"chunk_size": 800, "hidden": (64, 64)}),
        "hnet-full": (HyperMLP, {"hidden": (25, 25)}),
    },
    "permuted": {
        "hnet-chunked": (ChunkedHyperMLP, {"chunk_size": 800, "hidden": (64, 64)}),
        "hnet-chunked-large": (ChunkedHyperMLP, {"chunk_size": 2000, "hidden": (100, 100)}),
        "hnet-full": (HyperMLP, {"hidden": (25, 25)}),
    },
    "split-cnn": {
        "hnet-chunked": (ChunkedHyperMLP, {"chunk_size": 800, "hidden": (64, 64)}),
    },
}
BASELINES = ("finetune", "ewc", "online-ewc", "si", "multitask")


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ContinualError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")


def benchmark_methods(benchmark: str) -> list[str]:
    """Every method of ``benchmark``: its hypernetworks, then the baselines."""
    _check_benchmark(benchmark)
    return [*HYPERNETWORKS[benchmark], *BASELINES]


def benchmark_tasks(benchmark: str, data: TaskData, *, quick: bool = False
                    ) -> list[ContinualTask]:
    """The task sequence of ``benchmark`` from ``data`` (Fashion-MNIST). ``quick``: 3 permuted
    tasks instead of 10 and the first 500 test images of each task (a smoke run)."""
    _check_benchmark(benchmark)
    limit = 500 if quick else None
    if _SEQUENCE[benchmark] == "split":
        return split_tasks(data, test_limit=limit)
    return permuted_tasks(data, 3 if quick else 10, seed=0, test_limit=limit)


def _target(benchmark: str, tasks: list[ContinualTask], heads: int) -> TargetNetwork:
    shape, classes = tuple(tasks[0].train_x.shape[1:]), tasks[0].classes
    if benchmark == "split-cnn":
        return TargetCNN(shape, classes, heads=heads)
    return TargetMLP(shape, classes, hidden=TARGET_HIDDEN, heads=heads)


def _learner(benchmark: str, method: str, tasks: list[ContinualTask]
             ) -> tuple[ContinualLearner, dict[str, Any]]:
    if method in HYPERNETWORKS[benchmark]:
        cls, kwargs = HYPERNETWORKS[benchmark][method]
        target = _target(benchmark, tasks, heads=1)
        beta = BETA_DEFAULTS[_SEQUENCE[benchmark]]
        hnet = cls(parameter_shapes(target), **kwargs)
        config = {"hypernetwork": cls.__name__, **kwargs, "beta": beta,
                  "embedding_dim": hnet.embedding_dim}
        return HypernetworkLearner(hnet, target, beta, name=method), config
    model = _target(benchmark, tasks, heads=len(tasks))
    strength = BASELINE_STRENGTH[benchmark].get(method, 0.0)
    penalty: WeightPenalty | None = {
        "finetune": lambda: None,
        "ewc": lambda: EWC(strength),
        "online-ewc": lambda: OnlineEWC(strength, gamma=1.0),
        "si": lambda: SynapticIntelligence(strength),
    }[method]()
    return RegularizedLearner(model, penalty), ({} if penalty is None else
                                                {"strength": strength})


def run_method(benchmark: str, method: str, tasks: list[ContinualTask],
               settings: TrainingSettings, *, progress: bool = False) -> dict[str, Any]:
    """Train ``method`` on ``tasks`` and measure it: :meth:`SequenceResult.to_json` plus its
    ``config`` and, on the Split sequences, ``task_inferred_accuracy`` (percent). The target network
    starts from ``torch.manual_seed(settings.seed)`` for every method."""
    if method not in benchmark_methods(benchmark):
        raise ContinualError(f"unknown method {method!r} for {benchmark}; known: "
                             f"{', '.join(benchmark_methods(benchmark))}")
    torch.manual_seed(settings.seed)
    bar = None
    on_step: StepCallback | None = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps * len(tasks), desc=f"{benchmark} {method}",
                   unit="step", dynamic_ncols=True)
        on_step = lambda _: bar.update(1)  # noqa: E731 - one step of any task
    result: SequenceResult
    learner: ContinualLearner
    try:
        if method == "multitask":
            model = _target(benchmark, tasks, heads=len(tasks))
            result, learner = run_multitask(model, tasks, settings, on_step)
            config: dict[str, Any] = {}
        else:
            learner, config = _learner(benchmark, method, tasks)
            result = run_sequence(learner, tasks, settings, on_step)
    finally:
        if bar is not None:
            bar.close()
    out = {**result.to_json(), "config": config}
    if _SEQUENCE[benchmark] == "split":
        out["task_inferred_accuracy"] = round(100 * task_inferred_accuracy(learner, tasks), 2)
    return out
