"""The scoring protocol's fixed choices, in one light module (no torch): the settings, the
service's records and the library's defaults all read them from here.

A score is the top-1 accuracy of a network with GHN-predicted parameters on the first
:data:`DEFAULT_EVAL_IMAGES` images of the task's fixed validation split, after recalibration on
:data:`RECALIBRATION_BATCHES` training batches of :data:`RECALIBRATION_BATCH_SIZE` (seed 0):
batch-norm statistics re-estimated, or, without batch norm, activations normalised
(:func:`nas_service.scoring.evaluation.recalibrate`). ``docs/evaluation.md`` gives the reasons.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

BatchNormMode = Literal["batch", "recalibrated"]

DEFAULT_TASK = "fashion-mnist"
"""The task of the bundled GHN, scored when none is named."""

DEFAULT_EVAL_IMAGES = 1000
"""Validation images a score is taken on by default (the first N of the task's fixed split; the
service's ``NAS_EVAL_IMAGES``, the library's ``surrogate_accuracy``). Scoring time is
proportional to it, and on the held-out architectures Kendall tau against trained accuracy is the
same from 500 to 5,000 images (``bench/surrogate_budget_bench.py``): 1,000 costs a fifth of all
5,000 for the same ranking.
"""

RECALIBRATION_BATCHES = 4
RECALIBRATION_BATCH_SIZE = 128

SURROGATE_MODE: BatchNormMode = "recalibrated"
"""How batch norm is treated in the score the service reports (``docs/evaluation.md``)."""

READOUT = True
"""Whether the service's score refits the classifier on the labelled recalibration images
(:func:`nas_service.scoring.evaluation.fit_readout`) after recalibrating the network: on the
held-out architectures it raises both the mean score and Kendall tau against trained accuracy
(``docs/evaluation.md``)."""


def score_name(readout: bool) -> str:
    """``predicted-readout``: GHN-predicted parameters, recalibrated, classifier refitted;
    ``predicted-recalibrated``: the same without the refit."""
    return "predicted-readout" if readout else f"predicted-{SURROGATE_MODE}"


SCORE_NAME = score_name(READOUT)
"""The name of the score the service reports, evaluated in eval mode."""
SCORE_SPLIT = "val"
BPC_NAME = "predicted-bpc"
"""The name of the score of a character task (``gcide-chars``): validation bits per character
of the network with GHN-predicted parameters, lower is better
(:mod:`nas_service.scoring.language`); searches rank by its negative."""
RANKING_NAME = "ranking-head"
"""The name of the ranking score: the GHN's ranking head's estimate of trained accuracy."""

DEFAULT_MAX_SCORING_BYTES = 640 * 1024 * 1024
"""Memory one scoring may take beyond what the process holds anyway (the GHN, the task data):
the default of the service's ``NAS_MAX_SCORING_BYTES`` (:mod:`nas_service.scoring.cost`).
``serve`` scores for the API and for its worker at once, in processes that each hold torch and
the GHN (about 1.5 GB at rest in all): 1.5 GB + 2 x this is its worst case, and what
``bench/latency_bench.py`` measures while a search runs is in the README."""
DEFAULT_MAX_SCORING_MACS = 2_000_000_000_000
"""Multiply-accumulates one scoring may take (``NAS_MAX_SCORING_MACS``): one to two minutes of a
2-core CPU (``bench/admission_bench.py`` measures the rate)."""
DEFAULT_SCORING_TIMEOUT_SECONDS = 600.0
"""How long a scoring process may take per graph of a batch before it is taken for stuck,
killed and started again (``NAS_SCORING_TIMEOUT_SECONDS``): five to ten times what the most
costly graph :data:`DEFAULT_MAX_SCORING_MACS` admits takes a 2-core CPU."""

# ---- plain SGD: the ground truth's protocol, and the short training searches may rank by ----

SGD_BATCH_SIZE = 128
SGD_LR = 0.05
SGD_MOMENTUM = 0.9
"""Nesterov momentum of every SGD run here (:func:`nas_service.training.evaluate.sgd_train`,
:mod:`~nas_service.scoring.short_training`)."""
SGD_WEIGHT_DECAY = 5e-4
SGD_GRAD_CLIP = 5.0
"""Gradient-norm clip: some sampled architectures (no batch norm, deep residual sums) diverge at
lr 0.05 without it, and a NaN score says nothing about the GHN."""
SGD_FINITE_CHECK_EVERY = 25
"""Steps between two checks of the loss for a non-finite value (each check waits for the
device); training stops at the first check that finds one."""
SGD_EPOCH_IMAGES = 8000
"""Training images of one epoch of the ground truth (4 epochs of them,
:data:`nas_service.training.generalization.GROUND_TRUTH`): the short training draws its batches
from the first epoch's shuffle."""

SHORT_TRAINING_KIND = "short-training-accuracy"
"""The ``score_kind`` of a candidate ranked by its short training (a search job's
``ranking: {"method": "short-training"}``)."""
DEFAULT_SHORT_TRAINING_STEPS = 8
MAX_SHORT_TRAINING_STEPS = SGD_EPOCH_IMAGES // SGD_BATCH_SIZE
"""At most one epoch of the ground truth's images (62 batches of 128)."""


def short_training_target(steps: int) -> str:
    """What a short training of ``steps`` steps is, in words."""
    return (f"validation accuracy after {steps} step{'s' if steps != 1 else ''} of SGD from the "
            f"default initialisation (batches of {SGD_BATCH_SIZE}, lr {SGD_LR:g}, cosine decay)")


SHORT_TRAINING_MEASUREMENTS = Path(__file__).resolve().parents[1] / "assets" / "short-training.json"
"""Kendall τ of short trainings against trained accuracy, by task and number of steps, as
``bench/finetune_bench.py --asset`` measured them."""


def short_training_description(task: str, steps: int) -> dict[str, Any]:
    """What a job ranked by a short training of ``steps`` steps on ``task`` says of its score:
    ``target`` in words and, where ``bench/finetune_bench.py`` measured this task and number
    of steps, ``kendall_tau`` against trained accuracy on the architectures ``measured_on``
    names (families neither the GHN nor the protocol's choices were fit on)."""
    out: dict[str, Any] = {"target": short_training_target(steps), "kendall_tau": None,
                           "measured_on": None}
    measured = _short_training_measurements().get(task, {}).get(str(steps))
    if isinstance(measured, dict):
        out.update(kendall_tau=measured.get("kendall_tau"),
                   measured_on=measured.get("measured_on"))
    return out


@lru_cache(maxsize=1)
def _short_training_measurements() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(SHORT_TRAINING_MEASUREMENTS.read_text())
    except (OSError, ValueError):
        return {}
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return tasks if isinstance(tasks, dict) else {}
