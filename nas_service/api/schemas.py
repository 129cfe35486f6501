"""Request and response bodies of the ``/v1`` API (pydantic models; the OpenAPI schema at
``/docs`` is generated from them). Requests refuse unknown fields, so a misspelt option is a 422
rather than silently ignored, and are strict about types: ``"seed": "7"`` is a 422, not 7."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nas_service.data import DatasetError, get_task, list_tasks
from nas_service.scoring.fidelity import MAX_BRACKET, MAX_ETA, MAX_RUNGS
from nas_service.scoring.protocol import (
    DEFAULT_SHORT_TRAINING_STEPS,
    MAX_SHORT_TRAINING_STEPS,
    SHORT_TRAINING_KIND,
)
from nas_service.spaces import SPACES, SearchSpaceError, get_space

MAX_SEED = 2**63 - 1  # the seed column is a signed 64-bit integer

Strategy = Literal["random", "evolution"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
CandidateStatusName = Literal["scored", "rejected", "failed"]
ScoreKind = Literal["estimated-trained-accuracy", "predicted-accuracy", "negative-predicted-bpc",
                    "short-training-accuracy"]
assert SHORT_TRAINING_KIND in ScoreKind.__args__  # type: ignore[attr-defined]
RankingMethod = Literal["ghn", "short-training"]


# Documented as enums, so that clients (and generated tests) see the names that exist; validated
# by the functions below, which also accept a task's aliases ("Fashion_MNIST").
SpaceName = Annotated[str, Field(
    max_length=64, json_schema_extra={"enum": sorted(SPACES)},
    description="a search space name; views of the families space (families[resnet,vgg], "
                "families[-densenet,-vit]) are accepted too")]
TaskName = Annotated[str, Field(max_length=64, json_schema_extra={"enum": list_tasks()})]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _canonical_task(value: str) -> str:
    try:
        return get_task(value).name
    except DatasetError as e:
        raise ValueError(str(e)) from None


def _known_space(value: str) -> str:
    """The space's canonical name (views of the families space are written in one way)."""
    try:
        return get_space(value).name
    except SearchSpaceError as e:
        raise ValueError(str(e)) from None


# ---- architectures -----------------------------------------------------------------------------


class ArchitectureRequest(_Request):
    """Either ``graph`` (a ``nas-graph/1`` document) or ``space`` and ``seed`` (an architecture
    sampled from a search space), and the ``task`` to score it on."""

    # The rule of _one_source, in the document too.
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [
            {"required": ["graph"], "properties": {"graph": {"type": "object"},
                                                   "space": {"type": "null"},
                                                   "seed": {"type": "null"}}},
            {"required": ["space", "seed"], "properties": {"graph": {"type": "null"},
                                                           "space": {"type": "string"},
                                                           "seed": {"type": "integer"}}},
        ],
        "examples": [
            {"space": "cells", "seed": 7, "task": "fashion-mnist"},
            {"graph": {"format": "nas-graph/1", "name": "linear", "nodes": [
                {"id": "input", "op": "input", "shape": [1, 28, 28]},
                {"id": "flat", "op": "flatten", "inputs": ["input"]},
                {"id": "fc", "op": "linear", "inputs": ["flat"], "out_features": 10},
                {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]}},
        ],
    })

    graph: dict[str, Any] | None = Field(
        default=None, description="a nas-graph/1 document (docs/graph-format.md)")
    space: SpaceName | None = Field(default=None, description="a search space name")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    task: TaskName = "fashion-mnist"

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return _canonical_task(value)

    @field_validator("space")
    @classmethod
    def _space(cls, value: str | None) -> str | None:
        return None if value is None else _known_space(value)

    @model_validator(mode="after")
    def _one_source(self) -> ArchitectureRequest:
        if self.graph is not None and (self.space is not None or self.seed is not None):
            raise ValueError("give either 'graph' or 'space' and 'seed', not both")
        if self.graph is None and (self.space is None or self.seed is None):
            raise ValueError("give 'graph', or both 'space' and 'seed'")
        return self


class Ranking(BaseModel):
    value: float = Field(description="the estimated accuracy after training, a fraction in "
                                     "[0, 1]; what search jobs rank candidates by")
    name: str = Field(description="which estimate: ranking-head (fit on trained architectures "
                                  "from this accuracy, the parameter count and, where the "
                                  "head reads it, grad_norm)")
    target: str = Field(description="what it estimates, e.g. test accuracy after 5 epochs of "
                                    "SGD")
    kendall_tau: float | None = Field(
        default=None, description="Kendall tau of the estimate against the target, on the "
                                  "architectures named by measured_on")
    measured_on: str | None = Field(
        default=None, description="the architectures kendall_tau was measured on")
    grad_norm: float | None = Field(
        default=None, description="the network's gradient norm at its default initialisation "
                                  "(seed 0, 128 training images), which the head reads as a "
                                  "sign of whether SGD trains it; null when the head does not "
                                  "read it or it was not finite")


class Score(BaseModel):
    value: float = Field(description="accuracy with the predicted weights (what the checkpoint "
                                     "reproduces), a fraction in [0, 1]; for a character task "
                                     "(name predicted-bpc) validation bits per character, "
                                     "lower is better")
    name: str = Field(description="which score: predicted-readout (predicted weights, "
                                  "recalibrated, classifier refitted on the recalibration "
                                  "images), predicted-recalibrated, or predicted-bpc (a "
                                  "language model's bits per character with its predicted "
                                  "weights)")
    split: str = Field(description="the split it was measured on")
    images: int | None = Field(default=None, description="images it was measured on")
    recalibration_images: int | None = None
    ranking: Ranking | None = Field(
        default=None, description="the GHN's ranking head's estimate of trained accuracy; "
                                  "null when the loaded GHN has none")


class CheckpointLink(BaseModel):
    id: str = Field(description="SHA-256 of the file; also its ETag")
    url: str
    size_bytes: int | None = None


class ArchitectureResponse(BaseModel):
    id: str
    content_hash: str
    task: str
    name: str | None
    num_parameters: int
    flops: int = Field(description="multiply-accumulates of one forward pass of one sample")
    score: Score | None
    ghn_version: str | None
    timings: dict[str, float] = Field(description="seconds spent per stage when it was scored")
    checkpoint: CheckpointLink | None
    created_at: datetime
    graph: dict[str, Any]


# ---- search jobs -------------------------------------------------------------------------------


class Budget(_Request):
    candidates: int = Field(ge=1, description="candidates 0..candidates-1 are evaluated; at most "
                                              "the service's NAS_MAX_SEARCH_CANDIDATES "
                                              "(10000 by default)")
    seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                  description="stop after this long, counted from the claim")


class Constraints(_Request):
    max_parameters: int | None = Field(default=None, ge=1, le=2**62)
    max_flops: int | None = Field(default=None, ge=1, le=2**62,
                                  description="multiply-accumulates per sample")


class FidelityConfig(_Request):
    """Multi-fidelity rungs (successive halving in brackets, ``docs/api.md``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"rungs": [250, 1000], "eta": 4}]})

    rungs: list[Annotated[int, Field(ge=1, le=10_000_000)]] = Field(
        min_length=1, max_length=MAX_RUNGS,
        description="validation images of each rung, increasing; the last is the service's "
                    "full budget (NAS_EVAL_IMAGES, GET /v1/hypernetworks: score.images)")
    eta: int = Field(default=4, ge=2, le=MAX_ETA,
                     description="the best 1/eta of each rung (rounded up, per bracket) are "
                                 "scored at the next")
    bracket: int | None = Field(
        default=None, ge=2, le=MAX_BRACKET,
        description="consecutive candidates that compete for promotion (at least eta); "
                    "default eta ** len(rungs)")


class RankingConfig(_Request):
    """What a search job ranks its candidates by (``docs/api.md``, "Ranking")."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"method": "short-training", "steps": 8}]})

    method: RankingMethod = Field(
        description="ghn: the GHN's score (its ranking head's estimate of trained accuracy "
                    "where the GHN has one), about 2 s a candidate on a CPU; short-training: "
                    "the candidate's validation accuracy after a few SGD steps from its default "
                    "initialisation, which ranks families the GHN was not trained on far "
                    "better, at about twice the cost. Every candidate gets its GHN-predicted "
                    "checkpoint and score either way")
    steps: int | None = Field(
        default=None, ge=1, le=MAX_SHORT_TRAINING_STEPS,
        description=f"SGD steps (batches of 128) of short-training; default "
                    f"{DEFAULT_SHORT_TRAINING_STEPS}, the number its Kendall tau was measured at")

    @model_validator(mode="after")
    def _steps_only_for_short_training(self) -> RankingConfig:
        if self.method != "short-training" and self.steps is not None:
            raise ValueError("steps applies to method 'short-training' only")
        return self


class SearchJobRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"space": "cells", "seed": 0, "budget": {"candidates": 200}},
        {"space": "cells", "task": "fashion-mnist", "strategy": "evolution", "seed": 1,
         "budget": {"candidates": 4, "seconds": 600},
         "constraints": {"max_parameters": 100000, "max_flops": 2000000}},
        {"space": "cells", "seed": 2, "budget": {"candidates": 256},
         "fidelity": {"rungs": [250, 1000], "eta": 4}},
        {"space": "families[densenet,inception,convmixer]", "seed": 3, "budget": {"candidates": 32},
         "ranking": {"method": "short-training"}},
    ]})

    space: SpaceName
    task: TaskName = "fashion-mnist"
    strategy: Strategy = "random"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    budget: Budget
    constraints: Constraints = Field(default_factory=Constraints)
    fidelity: FidelityConfig | None = Field(
        default=None, description="score every candidate cheaply first and only the best "
                                  "at the full budget; null: every candidate in full")
    ranking: RankingConfig | None = Field(
        default=None, description="what candidates are ranked by; null: the GHN's score. With "
                                  "fidelity rungs, a short training ranks the last rung only: "
                                  "the cheaper rungs screen by the GHN's score")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return _canonical_task(value)

    @field_validator("space")
    @classmethod
    def _space(cls, value: str) -> str:
        return _known_space(value)


class Progress(BaseModel):
    done: int
    total: int
    fraction: float


class RungScore(BaseModel):
    rung: int = Field(description="0 for the cheapest; the job's last rung is the full score")
    images: int | None = Field(description="validation images the score was taken on")
    score: float | None = Field(description="the candidate's score at this rung (what the job "
                                            "ranks by); null when scoring at it failed")
    predicted_accuracy: float | None = None
    architecture_id: str | None = Field(
        default=None, description="the architecture stored with this rung's score and "
                                  "checkpoint")
    score_kind: ScoreKind | None = Field(
        default=None, description="short-training-accuracy when score is the candidate's short "
                                  "training (the job's ranking); null when it is the GHN's "
                                  "score, of the kind the candidate's score_kind names")
    short_training_seconds: float | None = Field(
        default=None, description="seconds its short training took")
    error: str | None = None


class CandidateResponse(BaseModel):
    id: str
    job_id: str
    index: int
    status: CandidateStatusName
    score: float | None = Field(description="what the job ranks candidates by, higher is "
                                            "better: an accuracy in [0, 1], or minus the bits "
                                            "per character of a character task; score_kind "
                                            "says which")
    score_kind: ScoreKind | None = Field(
        description="what score is: estimated-trained-accuracy, the GHN's ranking head's "
                    "estimate of the accuracy the network would reach if trained (its "
                    "architecture's score.ranking.value; score.ranking.target says which "
                    "training), when the GHN has a ranking head; else predicted-accuracy, the "
                    "accuracy of the network with its GHN-predicted weights (its "
                    "architecture's score.value, the same as predicted_accuracy); "
                    "negative-predicted-bpc on a character task: minus predicted_bpc, so that "
                    "the best candidate has the lowest bits per character; "
                    "short-training-accuracy in a job ranked by short training: the "
                    "validation accuracy after the job's ranking.steps SGD steps from the "
                    "default initialisation (the job's ranking.target); null when the "
                    "candidate has no score or no scored architecture")
    predicted_accuracy: float | None = Field(
        description="the accuracy of the network with its GHN-predicted weights, a fraction in "
                    "[0, 1]: its architecture's score.value, what its checkpoint reproduces; "
                    "null when the candidate has no scored architecture or its task is a "
                    "character task")
    predicted_bpc: float | None = Field(
        default=None, description="a character task's score: validation bits per character of "
                                  "the network with its GHN-predicted weights (lower is better), "
                                  "its architecture's score.value; null otherwise")
    rung: int | None = Field(description="the rung score was taken at (0: the cheapest); null "
                                         "when the candidate has no score")
    eval_images: int | None = Field(description="validation images score was taken on")
    full_fidelity: bool | None = Field(
        description="whether score is a full-budget score (the job's last rung): only those "
                    "compete for the job's best candidate")
    rung_scores: list[RungScore] = Field(default_factory=list,
                                         description="the candidate's score at every rung")
    reason: str | None
    num_parameters: int | None
    flops: int | None
    seconds: float | None = Field(description="seconds spent on it, every rung together")
    architecture_id: str | None
    architecture_url: str | None
    checkpoint_url: str | None
    created_at: datetime


class JobRanking(BaseModel):
    method: RankingMethod
    steps: int | None = Field(default=None, description="SGD steps of short-training")
    target: str | None = Field(
        default=None, description="what the score is, in words (short-training; for ghn each "
                                  "architecture's score.ranking.target says it)")
    kendall_tau: float | None = Field(
        default=None, description="Kendall tau of short-training's accuracy against trained "
                                  "accuracy, as bench/finetune_bench.py measured it for this "
                                  "task and number of steps; null where it was not measured")
    measured_on: str | None = Field(default=None,
                                    description="the architectures kendall_tau was measured on")


class SearchJobResponse(BaseModel):
    id: str
    status: JobStatusName
    space: str
    task: str
    strategy: Strategy
    seed: int
    budget: Budget
    constraints: Constraints
    fidelity: FidelityConfig | None = Field(description="the job's rungs (bracket filled in); "
                                                        "null: every candidate in full")
    ranking: JobRanking = Field(description="what the job ranks its candidates by")
    progress: Progress
    rate: float | None = Field(description="candidates recorded per second of running time")
    best_candidate: CandidateResponse | None
    timings: dict[str, float | None]
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class Page(BaseModel):
    next_cursor: str | None
    next: str | None = Field(description="the URL of the next page, if any")


class SearchJobPage(Page):
    items: list[SearchJobResponse]


class CandidatePage(Page):
    items: list[CandidateResponse]


# ---- tasks, hypernetworks, health --------------------------------------------------------------


class Adaptation(BaseModel):
    """The background job that adapts the GHN to a registered task."""

    status: JobStatusName
    progress: Progress
    attempts: int
    error: str | None
    result: dict[str, Any] | None = Field(
        description="after success: the last steps' mean loss and accuracy on the task, the "
                    "regulariser, and how far each earlier task's predictions moved (drift)")
    started_at: datetime | None
    finished_at: datetime | None


class TaskResponse(BaseModel):
    name: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    validation_images: int
    scored: bool = Field(description="a loaded hypernetwork scores this task")
    data_available: bool
    registered: bool = Field(default=False, description="uploaded through POST /v1/tasks")
    format: str | None = Field(default=None, description="the upload's format")
    train_images: int | None = None
    test_images: int | None = None
    created_at: datetime | None = None
    adaptation: Adaptation | None = None


class HypernetworkResponse(BaseModel):
    task: str | None
    tasks: list[str] = Field(description="every task it scores: its own, then those it was "
                                         "adapted to")
    version: str
    path: str | None
    device: str
    parameters: int
    config: dict[str, Any]
    training: dict[str, Any]
    score: dict[str, Any]


# ---- errors ------------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One entry of a validation problem's ``errors``."""

    location: str = Field(description="JSON-pointer-like path: /body/graph/nodes/3/kernel_size, "
                                      "/query/cursor, /header/idempotency-key")
    node: str | None = Field(default=None, description="the graph node at fault, if any")
    field: str | None = Field(default=None, description="the offending field's name, if any")
    message: str


class ProblemDetails(BaseModel):
    """An RFC 9457 problem (``application/problem+json``): every error response of the API.
    Problems may carry more members (``job_id`` on an idempotency conflict, ``checks`` on
    ``/readyz``)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="urn:nas-service:problem:<slug>, or about:blank for a plain "
                                  "HTTP status")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request's path")
    errors: list[FieldError] | None = Field(default=None,
                                            description="validation problems, one per field")
