"""The ranking head: an estimate of an architecture's trained accuracy from a few cheap features,
fit on a small set of trained architectures; what searches rank candidates by.

A head names its features (:data:`KNOWN_FEATURES`): the GHN's score, log10 of the parameter
count, log10 of the gradient norm at initialisation (:mod:`~.trainability`). They are nearly
independent evidence: the predicted weights say how well the wiring works, the size how much a
network can fit in a short training, the gradient whether plain SGD trains it at all, which the
GHN's score cannot see. The bundled head reads the score and the gradient norm; it is fit on
one set of families and measured on others (``docs/evaluation.md``, "The ranking head").
A gradient norm that is not finite or not positive counts as the smallest the head has seen.
With a few dozen trained architectures, more than a couple of weights overfit: mean-pooled GHN
graph embeddings as further features (1–8 principal components) lowered the leave-one-out τ
to 0.40–0.73 on 34 architectures.

The head is a few numbers, stored as JSON next to the GHN checkpoint whose scores it was fit on
(``<checkpoint stem>.ranking-head.json``, see :func:`head_path_for`). It names that checkpoint's
SHA-256: a head read beside another checkpoint is ignored, since another GHN's scores live on
another scale. Features outside the range seen in fitting are clamped into it, and the estimate
into [0, 1]: a 25 M-parameter ResNet gets the estimate of the largest network the head has seen,
not a linear extrapolation past 100 %.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import kendall_tau
from .protocol import SCORE_NAME

HEAD_FORMAT = "nas-ranking-head/1"
KNOWN_FEATURES = ("surrogate_accuracy", "log10_parameters", "log10_grad_norm")
"""What a head may read: the surrogate accuracy, log10 of the parameter count and log10 of the
gradient norm at initialisation (:func:`~.trainability.initial_grad_norm`)."""
FEATURES = ("surrogate_accuracy", "log10_parameters")
"""The features of a head whose file names none, and of one fit without gradient norms."""
DEFAULT_L2 = 1.0
"""Ridge penalty on the standardised weights. With two features the ranking depends only on the
ratio of the two weights: leave-one-out τ on the 34 architectures trained at the time moved by
at most 0.01 for penalties from 0.1 to 10; the penalty mostly keeps the estimates from overshooting."""
MIN_ARCHITECTURES = 5


class RankingHeadError(ValueError):
    """A ranking head file that is missing fields, of another format, or not finite."""


def feature_matrix(surrogate: Sequence[float], parameters: Sequence[float],
                   grad_norm: Sequence[float] | None = None,
                   features: Sequence[str] = FEATURES) -> np.ndarray:
    """``(n, len(features))``: each architecture's ``features`` (:data:`KNOWN_FEATURES`) from
    its surrogate accuracy, parameter count and, when a feature needs it, gradient norm at
    initialisation (``-inf`` where that is not finite or not positive)."""
    s = np.asarray(surrogate, dtype=np.float64)
    p = np.asarray(parameters, dtype=np.float64)
    if s.shape != p.shape or s.ndim != 1:
        raise ValueError(f"expected two equal-length sequences, got {s.shape} and {p.shape}")
    columns = {"surrogate_accuracy": lambda: s,
               "log10_parameters": lambda: np.log10(np.maximum(p, 1.0)),
               "log10_grad_norm": lambda: _log_grad_norm(grad_norm, s.shape)}
    return np.stack([columns[name]() for name in features], axis=1)


def _log_grad_norm(grad_norm: Sequence[float] | None, shape: tuple[int, ...]) -> np.ndarray:
    if grad_norm is None:
        raise ValueError("this ranking head reads log10_grad_norm: pass each architecture's "
                         "gradient norm at initialisation")
    g = np.asarray(grad_norm, dtype=np.float64)
    if g.shape != shape:
        raise ValueError(f"expected {shape[0]} gradient norms, got {g.size}")
    usable = np.isfinite(g) & (g > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(usable, np.log10(np.where(usable, g, 1.0)), -np.inf)


@dataclass(frozen=True)
class RankingHead:
    """``estimate = clip(bias + Σ weight_i · (clamp(x_i) − mean_i) / std_i, 0, 1)``."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...]
    """Smallest value of each feature among the fitted architectures (inputs are clamped up)."""
    high: tuple[float, ...]
    l2: float
    task: str
    target: str
    """What the estimate is an estimate of, e.g. "test accuracy after 5 epochs of SGD"."""
    architectures: int
    """How many trained architectures it was fit on."""
    ghn_sha256: str | None
    """SHA-256 of the GHN checkpoint whose scores it was fit on (``None``: not tied to one)."""
    kendall_tau: float | None = None
    """Leave-one-out Kendall τ against the target on the fitted architectures."""
    eval_images: int | None = None
    """Validation images behind the surrogate scores it was fit on."""
    features: tuple[str, ...] = FEATURES
    score: str = "predicted-recalibrated"
    """Which score its ``surrogate_accuracy`` feature is (``nas_service.scoring.protocol``):
    a head fit on one score is meaningless on another."""
    measured_on: str | None = None
    """The architectures its ``kendall_tau`` was measured on, in words."""

    @property
    def uses_grad_norm(self) -> bool:
        """Whether :meth:`predict` needs the gradient norm at initialisation."""
        return "log10_grad_norm" in self.features

    def predict(self, surrogate_accuracy: float, num_parameters: int,
                grad_norm: float | None = None) -> float:
        """The estimated trained accuracy, a fraction in [0, 1]. ``grad_norm`` (at
        initialisation) is needed when the head reads it (:attr:`uses_grad_norm`)."""
        return float(self.predict_many([surrogate_accuracy], [num_parameters],
                                       None if grad_norm is None else [grad_norm])[0])

    def predict_many(self, surrogate: Sequence[float], parameters: Sequence[float],
                     grad_norm: Sequence[float] | None = None) -> np.ndarray:
        return _estimate(feature_matrix(surrogate, parameters, grad_norm, self.features),
                         np.asarray(self.weights), self.bias, np.asarray(self.mean),
                         np.asarray(self.std), np.asarray(self.low), np.asarray(self.high))

    # ---- files -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, data: Any) -> RankingHead:
        if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
            raise RankingHeadError(f"not a {HEAD_FORMAT} document")
        try:
            head = cls(
                weights=_floats(data["weights"]), bias=float(data["bias"]),
                mean=_floats(data["mean"]), std=_floats(data["std"]),
                low=_floats(data["low"]), high=_floats(data["high"]), l2=float(data["l2"]),
                task=str(data["task"]), target=str(data["target"]),
                architectures=int(data["architectures"]),
                ghn_sha256=None if data.get("ghn_sha256") is None else str(data["ghn_sha256"]),
                kendall_tau=None if data.get("kendall_tau") is None
                else float(data["kendall_tau"]),
                eval_images=None if data.get("eval_images") is None
                else int(data["eval_images"]),
                features=tuple(data.get("features", FEATURES)),
                score=str(data.get("score", "predicted-recalibrated")),
                measured_on=None if data.get("measured_on") is None
                else str(data["measured_on"]))
        except KeyError as e:
            raise RankingHeadError(f"malformed ranking head: no field {e}") from None
        except (TypeError, ValueError) as e:
            raise RankingHeadError(f"malformed ranking head: {e}") from None
        try:
            _check_features(head.features)
        except ValueError as e:
            raise RankingHeadError(f"ranking head {e}") from None
        n = len(head.features)
        vectors = (head.weights, head.mean, head.std, head.low, head.high)
        if any(len(v) != n for v in vectors):
            raise RankingHeadError(f"ranking head vectors must have {n} entries each")
        if not all(math.isfinite(v) for vec in vectors for v in vec) or not math.isfinite(
                head.bias) or any(s <= 0 for s in head.std):
            raise RankingHeadError("ranking head numbers must be finite, with std > 0")
        return head

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RankingHead:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise RankingHeadError(f"cannot read ranking head {path}: {e}") from None
        try:
            return cls.from_dict(data)
        except RankingHeadError as e:
            raise RankingHeadError(f"{path}: {e} (fix or remove the file)") from None


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _estimate(x: np.ndarray, weights: np.ndarray, bias: float, mean: np.ndarray, std: np.ndarray,
              low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The head's formula on feature rows ``x``: clamped into ``[low, high]``, standardised,
    weighted, and the estimate clipped to [0, 1]."""
    z = (np.clip(x, low, high) - mean) / std  # -inf (no usable gradient norm) becomes low
    return np.clip(bias + z @ weights, 0.0, 1.0)


def _solve(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float, np.ndarray,
                                                              np.ndarray]:
    """Ridge on standardised features, intercept unpenalised: ``(weights, bias, mean, std)``."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature gets weight 0 anyway
    z = (x - mean) / std
    bias = float(y.mean())
    weights = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ (y - bias))
    return weights, bias, mean, std


def _check_features(features: Sequence[str]) -> None:
    """``ValueError`` unless ``features`` are distinct names of :data:`KNOWN_FEATURES`."""
    if (not features or len(set(features)) != len(features)
            or any(f not in KNOWN_FEATURES for f in features)):
        raise ValueError(f"features {list(features)} must be distinct names of "
                         f"{list(KNOWN_FEATURES)}")


def _check(surrogate: Sequence[float], parameters: Sequence[float], trained: Sequence[float],
           grad_norm: Sequence[float] | None, features: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray]:
    _check_features(features)
    x = feature_matrix(surrogate, parameters, grad_norm, features)
    y = np.asarray(trained, dtype=np.float64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{x.shape[0]} architectures but {y.size} trained accuracies")
    if x.shape[0] < MIN_ARCHITECTURES:
        raise ValueError(f"a ranking head needs at least {MIN_ARCHITECTURES} trained "
                         f"architectures, got {x.shape[0]}")
    # A network without a usable gradient norm is fit as the smallest one seen, as predict
    # clamps it.
    x = np.where(np.isneginf(x), np.min(np.where(np.isfinite(x), x, np.inf), axis=0), x)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores, parameter counts and trained accuracies must be finite")
    return x, y


def fit_ranking_head(surrogate: Sequence[float], parameters: Sequence[float],
                     trained: Sequence[float], *, task: str, target: str,
                     grad_norm: Sequence[float] | None = None,
                     features: Sequence[str] = FEATURES,
                     ghn_sha256: str | None = None, eval_images: int | None = None,
                     score: str = SCORE_NAME, measured_on: str | None = None,
                     l2: float = DEFAULT_L2) -> RankingHead:
    """Fits the head on every architecture given and records its leave-one-out Kendall τ.
    ``features`` are what it reads (``grad_norm``, at initialisation, is needed for
    ``log10_grad_norm``), ``score`` names the score ``surrogate`` holds, ``measured_on`` the
    architectures."""
    x, y = _check(surrogate, parameters, trained, grad_norm, features)
    weights, bias, mean, std = _solve(x, y, l2)
    tau = kendall_tau(leave_one_out(surrogate, parameters, trained, grad_norm=grad_norm,
                                    features=features, l2=l2), y)
    return RankingHead(weights=_floats(weights), bias=bias, mean=_floats(mean),
                       std=_floats(std), low=_floats(x.min(axis=0)),
                       high=_floats(x.max(axis=0)), l2=l2, task=task, target=target,
                       architectures=int(x.shape[0]), ghn_sha256=ghn_sha256,
                       kendall_tau=None if math.isnan(tau) else float(tau),
                       eval_images=eval_images, features=tuple(features), score=score,
                       measured_on=measured_on or f"{int(x.shape[0])} trained architectures "
                       "(leave-one-out)")


def leave_one_out(surrogate: Sequence[float], parameters: Sequence[float],
                  trained: Sequence[float], *, grad_norm: Sequence[float] | None = None,
                  features: Sequence[str] = FEATURES, l2: float = DEFAULT_L2) -> list[float]:
    """Each architecture's estimate by a head fit on all the others (an honest test score)."""
    x, y = _check(surrogate, parameters, trained, grad_norm, features)
    out = []
    for i in range(x.shape[0]):
        keep = np.arange(x.shape[0]) != i
        weights, bias, mean, std = _solve(x[keep], y[keep], l2)
        # Clamped into the fold's range, as a fitted head clamps its inputs.
        out.append(float(_estimate(x[i:i + 1], weights, bias, mean, std,
                                   x[keep].min(axis=0), x[keep].max(axis=0))[0]))
    return out


def head_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where the ranking head of a GHN checkpoint lives: ``ghn.safetensors`` →
    ``ghn.ranking-head.json`` in the same folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors")
                                + ".ranking-head.json")


def head_for_checkpoint(checkpoint: str | os.PathLike, checkpoint_sha256: str,
                        score: str | None = None) -> RankingHead | None:
    """The ranking head beside ``checkpoint`` when there is one fit on that very checkpoint
    (and, when ``score`` is given, on that score).

    ``None`` when there is no head file or it names another checkpoint or score (the scores it
    was fit on came from another GHN, or were taken another way); :class:`RankingHeadError`
    when the file is broken.
    """
    path = head_path_for(checkpoint)
    if not path.is_file():
        return None
    head = RankingHead.load(path)
    if head.ghn_sha256 is not None and head.ghn_sha256 != checkpoint_sha256:
        return None
    if score is not None and head.score != score:
        return None
    return head
