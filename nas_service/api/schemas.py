"""Request and response bodies of the ``/v1`` API (pydantic models; the OpenAPI schema at
``/docs`` is generated from them). Requests refuse unknown fields, so a misspelt option is a 422
rather than silently ignored, and are strict about types: ``"seed": "7"`` is a 422, not 7."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nas_service.data import DatasetError, get_task
from nas_service.spaces import SPACES

MAX_SEED = 2**63 - 1  # the seed column is a signed 64-bit integer

Strategy = Literal["random", "evolution"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
CandidateStatusName = Literal["scored", "rejected", "failed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _canonical_task(value: str) -> str:
    try:
        return get_task(value).name
    except DatasetError as e:
        raise ValueError(str(e)) from None


def _known_space(value: str) -> str:
    if value not in SPACES:
        raise ValueError(f"unknown search space {value!r}; known spaces: "
                         f"{', '.join(sorted(SPACES))}")
    return value


# ---- architectures -----------------------------------------------------------------------------


class ArchitectureRequest(_Request):
    """Either ``graph`` (a ``nas-graph/1`` document) or ``space`` and ``seed`` (an architecture
    sampled from a search space), and the ``task`` to score it on."""

    graph: dict[str, Any] | None = Field(
        default=None, description="a nas-graph/1 document (docs/graph-format.md)")
    space: str | None = Field(default=None, max_length=64, description="a search space name")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    task: str = Field(default="fashion-mnist", max_length=64)

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


class Score(BaseModel):
    value: float = Field(description="accuracy, a fraction in [0, 1]")
    name: str = Field(description="which score: predicted-recalibrated")
    split: str = Field(description="the split it was measured on")
    images: int | None = Field(default=None, description="images it was measured on")
    recalibration_images: int | None = None


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
    candidates: int = Field(ge=1, description="candidates 0..candidates-1 are evaluated")
    seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                  description="stop after this long, counted from the claim")


class Constraints(_Request):
    max_parameters: int | None = Field(default=None, ge=1, le=2**62)
    max_flops: int | None = Field(default=None, ge=1, le=2**62,
                                  description="multiply-accumulates per sample")


class SearchJobRequest(_Request):
    space: str = Field(max_length=64)
    task: str = Field(default="fashion-mnist", max_length=64)
    strategy: Strategy = "random"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    budget: Budget
    constraints: Constraints = Field(default_factory=Constraints)

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


class CandidateResponse(BaseModel):
    id: str
    job_id: str
    index: int
    status: CandidateStatusName
    score: float | None
    reason: str | None
    num_parameters: int | None
    flops: int | None
    seconds: float | None
    architecture_id: str | None
    architecture_url: str | None
    checkpoint_url: str | None
    created_at: datetime


class SearchJobResponse(BaseModel):
    id: str
    status: JobStatusName
    space: str
    task: str
    strategy: Strategy
    seed: int
    budget: Budget
    constraints: Constraints
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


class TaskResponse(BaseModel):
    name: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    validation_images: int
    scored: bool = Field(description="a loaded hypernetwork scores this task")
    data_available: bool


class HypernetworkResponse(BaseModel):
    task: str | None
    version: str
    path: str | None
    device: str
    parameters: int
    config: dict[str, Any]
    training: dict[str, Any]
    score: dict[str, Any]
