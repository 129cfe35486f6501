"""How good is an architecture on a task: predicted weights evaluated, ranked, and compared.

The layer between the hypernetwork (:mod:`nas_service.ghn`) and everything that ranks
architectures: the service's searches (:mod:`nas_service.search`) and the offline research
harness (:mod:`nas_service.training`) both score through it.

::

    from nas_service.scoring import ArchitectureScorer

    scorer = ArchitectureScorer.load()                 # the bundled GHN and its ranking head
    spec = scorer.check_task("fashion-mnist")
    (scored,) = scorer.score([graph], spec)            # a ScoredGraph, or the graph's exception
    scored.accuracy, scored.ranking, scored.state

Modules:

- :mod:`~.protocol`: the scoring protocol's fixed choices (images, recalibration, names); no torch.
- :mod:`~.evaluation`: loading predicted weights into a network, recalibration (batch-norm
  statistics, or activations of networks without batch norm), accuracy.
- :mod:`~.surrogate`: the library facade, ``predict_parameters`` and ``surrogate_accuracy``.
- :mod:`~.scorer`: :class:`ArchitectureScorer`, the service's scorer of batches of graphs.
- :mod:`~.cost`: admission control: the memory and compute of scoring a graph, estimated from
  its shapes, against a :class:`ScoringBudget`.
- :mod:`~.task_fit`: does a graph fit a task (input shape, classes).
- :mod:`~.ranking_head`: the estimate of trained accuracy searches rank by.
- :mod:`~.trainability`: the gradient norm at initialisation a ranking head may read.
- :mod:`~.short_training`: a few SGD steps from the default initialisation, what search jobs
  may rank by out of the GHN's spaces.
- :mod:`~.metrics`: rank correlations (Kendall's tau, Spearman's rho) and top-1 regret.

Names are imported on first use, so reading :mod:`~.protocol` (the settings do) loads no torch.
"""

import importlib
from typing import Any

__all__ = [
    "SCORE_NAME",
    "ArchitectureScorer",
    "GraphDoesNotFitTask",
    "RankingHead",
    "ScoredGraph",
    "ScoringBudget",
    "ScoringTooCostly",
    "TaskNotSupported",
    "accuracy",
    "is_memory_failure",
    "kendall_tau",
    "predict_parameters",
    "ranking_value",
    "recalibrate",
    "spearman_rho",
    "surrogate_accuracy",
]

_LAZY = {
    "SCORE_NAME": "protocol",
    "ArchitectureScorer": "scorer",
    "ScoredGraph": "scorer",
    "TaskNotSupported": "scorer",
    "ranking_value": "scorer",
    "ScoringBudget": "cost",
    "ScoringTooCostly": "cost",
    "is_memory_failure": "cost",
    "GraphDoesNotFitTask": "task_fit",
    "RankingHead": "ranking_head",
    "accuracy": "evaluation",
    "recalibrate": "evaluation",
    "kendall_tau": "metrics",
    "spearman_rho": "metrics",
    "predict_parameters": "surrogate",
    "surrogate_accuracy": "surrogate",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
