"""The results of :mod:`nas_service.client`: frozen dataclasses mirroring the API's JSON.

Each carries exactly the fields of its API resource (docs/api.md), plus
``Architecture.cached`` (the service answered 200 with a stored result instead of 201), and is
built by ``from_json``: fields a newer server adds are ignored, so an old client keeps working.
``to_dict()`` gives the fields back JSON-ready (datetimes as ISO 8601 strings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    text = str(value)
    if text.endswith("Z"):  # Python 3.10's fromisoformat does not read "Z"
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (datetimes as ISO 8601 strings)."""
        return _jsonable(self)


@dataclass(frozen=True)
class Ranking(_Result):
    """The ranking head's estimate of trained accuracy: what search jobs rank candidates by."""

    value: float  # estimated accuracy after training, a fraction in [0, 1]
    name: str  # "ranking-head"
    target: str  # what it estimates, e.g. "test accuracy after 5 epochs of SGD"
    kendall_tau: float | None = None  # against the target, on the architectures below
    measured_on: str | None = None  # the architectures kendall_tau was measured on
    grad_norm: float | None = None  # at initialisation, when the head reads it

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ranking:
        return cls(value=float(data["value"]), name=data["name"], target=data["target"],
                   kendall_tau=data.get("kendall_tau"), measured_on=data.get("measured_on"),
                   grad_norm=data.get("grad_norm"))


@dataclass(frozen=True)
class Score(_Result):
    """The surrogate accuracy and how it was measured."""

    value: float  # accuracy with the predicted weights, a fraction in [0, 1]
    name: str  # which score: "predicted-readout" or "predicted-recalibrated"
    split: str
    images: int | None = None
    recalibration_images: int | None = None
    ranking: Ranking | None = None  # None when the service's GHN has no ranking head

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Score:
        ranking = data.get("ranking")
        return cls(value=float(data["value"]), name=data["name"], split=data["split"],
                   images=data.get("images"), recalibration_images=data.get("recalibration_images"),
                   ranking=Ranking.from_json(ranking) if ranking else None)


@dataclass(frozen=True)
class CheckpointLink(_Result):
    id: str  # SHA-256 of the file; also its ETag
    url: str  # relative to the service, e.g. /v1/architectures/<id>/checkpoint
    size_bytes: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointLink:
        return cls(id=data["id"], url=data["url"], size_bytes=data.get("size_bytes"))


@dataclass(frozen=True)
class Architecture(_Result):
    """A scored architecture (``POST /v1/architectures``, ``GET /v1/architectures/{id}``).

    ``cached``: ``True`` when :meth:`Client.predict` got the stored result of an earlier score
    (HTTP 200), ``False`` when the GHN scored it for this request (201), ``None`` when read with
    :meth:`Client.architecture`.
    """

    id: str
    content_hash: str
    task: str
    name: str | None
    num_parameters: int
    flops: int  # multiply-accumulates of one forward pass of one sample
    score: Score | None
    ghn_version: str | None
    timings: dict[str, float]  # seconds per stage when it was scored
    checkpoint: CheckpointLink | None
    created_at: datetime
    graph: dict[str, Any]
    cached: bool | None = None

    @property
    def accuracy(self) -> float | None:
        """The surrogate accuracy (``score.value``)."""
        return self.score.value if self.score else None

    @property
    def estimated_trained_accuracy(self) -> float | None:
        """The ranking head's estimate of trained accuracy (``score.ranking.value``): what
        searches rank by; ``None`` when the service's GHN has no ranking head."""
        return self.score.ranking.value if self.score and self.score.ranking else None

    @property
    def score_kind(self) -> str | None:
        return self.score.name if self.score else None

    @property
    def checkpoint_url(self) -> str | None:
        return self.checkpoint.url if self.checkpoint else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], cached: bool | None = None) -> Architecture:
        return cls(
            id=data["id"], content_hash=data["content_hash"], task=data["task"],
            name=data.get("name"), num_parameters=int(data["num_parameters"]),
            flops=int(data["flops"]),
            score=Score.from_json(data["score"]) if data.get("score") else None,
            ghn_version=data.get("ghn_version"),
            timings={k: float(v) for k, v in (data.get("timings") or {}).items()},
            checkpoint=(CheckpointLink.from_json(data["checkpoint"])
                        if data.get("checkpoint") else None),
            created_at=_datetime(data["created_at"]), graph=dict(data.get("graph") or {}),
            cached=cached)


@dataclass(frozen=True)
class Budget(_Result):
    candidates: int
    seconds: float | None = None


@dataclass(frozen=True)
class Constraints(_Result):
    max_parameters: int | None = None
    max_flops: int | None = None  # multiply-accumulates per sample


@dataclass(frozen=True)
class Progress(_Result):
    done: int
    total: int
    fraction: float


@dataclass(frozen=True)
class Candidate(_Result):
    """One candidate of a search job; ``status`` is ``scored``, ``rejected`` or ``failed``.

    ``score`` is what the job ranks by and ``score_kind`` says which accuracy it is:
    ``"estimated-trained-accuracy"`` (the GHN's ranking head's estimate of the accuracy the
    network would reach if trained) or ``"predicted-accuracy"`` (the accuracy with its predicted
    weights, when the GHN has no ranking head), or ``"short-training-accuracy"`` in a job ranked
    by short training (the validation accuracy after a few SGD steps from the default
    initialisation, :attr:`Job.ranking`). ``predicted_accuracy`` is always the accuracy with the
    predicted weights: what the candidate's checkpoint reproduces. Both are ``None`` for an unscored candidate (and from a
    service too old to send them). On a character task (``gcide-chars``) ``score_kind`` is
    ``"negative-predicted-bpc"``: ``score`` is minus ``predicted_bpc``, the validation bits per
    character with the predicted weights (the best candidate has the lowest)."""

    id: str
    job_id: str
    index: int
    status: str
    score: float | None
    reason: str | None
    num_parameters: int | None
    flops: int | None
    seconds: float | None
    architecture_id: str | None
    architecture_url: str | None
    checkpoint_url: str | None
    created_at: datetime
    predicted_accuracy: float | None = None
    score_kind: str | None = None
    rung: int | None = None
    """The rung of the job's fidelity schedule ``score`` was taken at (0: the cheapest)."""
    eval_images: int | None = None
    """Validation images ``score`` was taken on."""
    full_fidelity: bool | None = None
    """Whether ``score`` is a full-budget score (the job's last rung); only those compete for
    the job's best candidate."""
    rung_scores: tuple[dict[str, Any], ...] = ()
    """Every rung's score: ``{"rung", "images", "score", "predicted_accuracy",
    "architecture_id", "score_kind", "short_training_seconds", "error"}``."""
    predicted_bpc: float | None = None
    """A character task's validation bits per character with the predicted weights."""

    @property
    def estimated_trained_accuracy(self) -> float | None:
        """``score`` when it is the ranking head's estimate of trained accuracy, else ``None``."""
        return self.score if self.score_kind == "estimated-trained-accuracy" else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            id=data["id"], job_id=data["job_id"], index=int(data["index"]),
            status=data["status"], score=data.get("score"), reason=data.get("reason"),
            num_parameters=data.get("num_parameters"), flops=data.get("flops"),
            seconds=data.get("seconds"), architecture_id=data.get("architecture_id"),
            architecture_url=data.get("architecture_url"),
            checkpoint_url=data.get("checkpoint_url"), created_at=_datetime(data["created_at"]),
            predicted_accuracy=data.get("predicted_accuracy"),
            score_kind=data.get("score_kind"), rung=data.get("rung"),
            eval_images=data.get("eval_images"), full_fidelity=data.get("full_fidelity"),
            rung_scores=tuple(dict(e) for e in data.get("rung_scores") or ()),
            predicted_bpc=data.get("predicted_bpc"))


@dataclass(frozen=True)
class Job(_Result):
    """A search job; ``status`` is ``queued``, ``running``, ``succeeded``, ``failed`` or
    ``cancelled``."""

    id: str
    status: str
    space: str
    task: str
    strategy: str
    seed: int
    budget: Budget
    constraints: Constraints
    progress: Progress
    rate: float | None  # candidates recorded per second of running time
    best_candidate: Candidate | None
    timings: dict[str, float | None]
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    """The job's rungs, ``{"rungs": [250, 1000], "eta": 4, "bracket": 16}``; ``None``: every
    candidate is scored in full."""
    ranking: dict[str, Any] | None = None
    """What the job ranks by: ``{"method": "ghn"}``, or ``{"method": "short-training", "steps",
    "target", "kendall_tau", "measured_on"}``."""

    @property
    def finished(self) -> bool:
        """``succeeded``, ``failed`` or ``cancelled``: the job will not change any more."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        budget, constraints, progress = (data["budget"], data.get("constraints") or {},
                                         data["progress"])
        best = data.get("best_candidate")
        return cls(
            id=data["id"], status=data["status"], space=data["space"], task=data["task"],
            strategy=data["strategy"], seed=int(data["seed"]),
            budget=Budget(candidates=int(budget["candidates"]), seconds=budget.get("seconds")),
            constraints=Constraints(max_parameters=constraints.get("max_parameters"),
                                    max_flops=constraints.get("max_flops")),
            progress=Progress(done=int(progress["done"]), total=int(progress["total"]),
                              fraction=float(progress["fraction"])),
            rate=data.get("rate"), best_candidate=Candidate.from_json(best) if best else None,
            timings=dict(data.get("timings") or {}), error=data.get("error"),
            attempts=int(data.get("attempts", 0)),
            cancel_requested=bool(data.get("cancel_requested", False)),
            created_at=_datetime(data["created_at"]), started_at=_datetime(data.get("started_at")),
            finished_at=_datetime(data.get("finished_at")), links=dict(data.get("links") or {}),
            fidelity=dict(data["fidelity"]) if data.get("fidelity") else None,
            ranking=dict(data["ranking"]) if data.get("ranking") else None)


@dataclass(frozen=True)
class Adaptation(_Result):
    """The job that adapts the service's GHN to a registered task."""

    status: str  # queued, running, succeeded, failed
    progress: Progress  # adaptation steps done / total
    attempts: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None  # loss, accuracy, drift of each earlier task, ...
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Adaptation:
        p = data.get("progress") or {}
        return cls(status=data["status"],
                   progress=Progress(int(p.get("done", 0)), int(p.get("total", 0)),
                                     float(p.get("fraction", 0.0))),
                   attempts=int(data.get("attempts", 0)), error=data.get("error"),
                   result=data.get("result"), started_at=_datetime(data.get("started_at")),
                   finished_at=_datetime(data.get("finished_at")))


@dataclass(frozen=True)
class Task(_Result):
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    validation_images: int
    scored: bool  # a loaded hypernetwork scores this task
    data_available: bool
    registered: bool = False  # uploaded with POST /v1/tasks
    format: str | None = None
    train_images: int | None = None
    test_images: int | None = None
    adaptation: Adaptation | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        adaptation = data.get("adaptation")
        return cls(name=data["name"], input_shape=tuple(int(s) for s in data["input_shape"]),
                   num_classes=int(data["num_classes"]),
                   class_names=tuple(data.get("class_names") or ()),
                   validation_images=int(data.get("validation_images", 0)),
                   scored=bool(data.get("scored")),
                   data_available=bool(data.get("data_available")),
                   registered=bool(data.get("registered")), format=data.get("format"),
                   train_images=data.get("train_images"), test_images=data.get("test_images"),
                   adaptation=Adaptation.from_json(adaptation) if adaptation else None)


@dataclass(frozen=True)
class Hypernetwork(_Result):
    task: str | None
    version: str
    path: str | None
    device: str
    parameters: int
    config: dict[str, Any]
    training: dict[str, Any]
    score: dict[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hypernetwork:
        return cls(task=data.get("task"), version=data["version"], path=data.get("path"),
                   device=data["device"], parameters=int(data["parameters"]),
                   config=dict(data.get("config") or {}),
                   training=dict(data.get("training") or {}), score=dict(data.get("score") or {}))
