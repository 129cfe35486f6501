"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020).

A hypernetwork turns a learned task embedding into all the weights of a target network; an
output regulariser keeps its outputs for earlier tasks' embeddings where they were, so tasks
are learned one after another without keeping their data. Baselines on the same target network
(sequential fine-tuning, EWC, online EWC, SI, multi-task training) and the Split / Permuted
task sequences make the comparison. See ``docs/continual.md``.

Quick use::

    from nas_service.continual import (ChunkedHyperMLP, HypernetworkLearner, TargetMLP,
                                       TrainingSettings, parameter_shapes, run_sequence,
                                       split_tasks)
    from nas_service.data import load_task

    tasks = split_tasks(load_task("fashion-mnist"))          # 5 tasks of 2 classes
    target = TargetMLP((1, 28, 28), classes=2)
    hnet = ChunkedHyperMLP(parameter_shapes(target))
    result = run_sequence(HypernetworkLearner(hnet, target, beta=0.01), tasks,
                          TrainingSettings(steps=1000))
    print(result.average, result.task1_after_each)
"""

from .baselines import EWC, OnlineEWC, SynapticIntelligence, WeightPenalty, diagonal_fisher
from .errors import ContinualError
from .experiment import (
    BASELINE_STRENGTH,
    BASELINES,
    BENCHMARKS,
    DEFAULT_STEPS,
    HYPERNETWORKS,
    benchmark_methods,
    benchmark_tasks,
    run_method,
)
from .hypernetwork import (
    BETA_DEFAULTS,
    ChunkedHyperMLP,
    HyperMLP,
    TaskHypernetwork,
    WeightLayout,
    output_regularizer,
    snapshot_outputs,
)
from .learners import (
    ContinualLearner,
    HypernetworkLearner,
    RegularizedLearner,
    SequenceResult,
    TrainingSettings,
    accuracy,
    run_multitask,
    run_sequence,
    task_inferred_accuracy,
)
from .targets import TargetCNN, TargetMLP, TargetNetwork, parameter_shapes
from .tasks import ContinualTask, permuted_tasks, pixel_permutations, split_tasks

__all__ = [
    "BASELINES",
    "BASELINE_STRENGTH",
    "BENCHMARKS",
    "BETA_DEFAULTS",
    "DEFAULT_STEPS",
    "EWC",
    "ChunkedHyperMLP",
    "ContinualError",
    "ContinualLearner",
    "ContinualTask",
    "HYPERNETWORKS",
    "HyperMLP",
    "HypernetworkLearner",
    "OnlineEWC",
    "RegularizedLearner",
    "SequenceResult",
    "SynapticIntelligence",
    "TargetCNN",
    "TargetMLP",
    "TargetNetwork",
    "TaskHypernetwork",
    "TrainingSettings",
    "WeightLayout",
    "WeightPenalty",
    "accuracy",
    "benchmark_methods",
    "benchmark_tasks",
    "diagonal_fisher",
    "output_regularizer",
    "parameter_shapes",
    "permuted_tasks",
    "pixel_permutations",
    "run_method",
    "run_multitask",
    "run_sequence",
    "snapshot_outputs",
    "split_tasks",
    "task_inferred_accuracy",
]
