"""The service's tables, as SQLAlchemy 2 typed ORM classes.

=================  =========================================================================
table              one row is
=================  =========================================================================
``architectures``  one architecture scored for one task by one GHN, unique on (content hash,
                   task, GHN version): the cache that makes a repeated ``POST`` answer without
                   running the GHN again, until another GHN (checkpoint) is loaded
``search_jobs``    one search request: its parameters, its state in the work queue (status,
                   lease, attempts) and its progress
``candidates``     candidate *i* of a job, unique on (job, i): redoing work after a crash
                   writes nothing new
``job_events``     an append-only log of what happened to a job (claimed, reclaimed, finished)
``checkpoints``    a safetensors file on disk, named by the SHA-256 of its content
``registered_tasks`` one dataset a user uploaded (its files lie in its own folder), and the
                   background job that adapts the GHN to it, leased like a search job
=================  =========================================================================

Identifiers are 32-character lowercase hex UUIDs (:func:`new_id`), except checkpoints (their
content hash) and events (an auto-incremented integer, which also orders them). Every time is a
timezone-aware UTC datetime taken from the database clock (:mod:`nas_service.db.clock`).

Changing a table means a new Alembic revision in ``nas_service/db/migrations/versions``; a test
fails when these classes and the migrated schema disagree.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nas_service.db.clock import UTCDateTime, db_now

# Named constraints: Alembic's batch mode (how SQLite alters a table) can only drop or change a
# constraint it can name, and the names are then the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32
HASH_LENGTH = 64
NAME_LENGTH = 128


def new_id() -> str:
    """A fresh random identifier: 32 lowercase hex characters."""
    return uuid.uuid4().hex


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class SearchStrategy(str, enum.Enum):
    RANDOM = "random"
    EVOLUTION = "evolution"


class CandidateStatus(str, enum.Enum):
    SCORED = "scored"
    REJECTED = "rejected"  # broke a constraint (reason says which); never scored
    FAILED = "failed"  # the evaluation raised; reason holds the error


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as its value in a VARCHAR with a CHECK constraint: portable, readable in psql, and
    # a new value is an ordinary (batch) migration rather than ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda members: [m.value for m in members],
                validate_strings=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(HASH_LENGTH), primary_key=True)  # sha256 of the file
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=db_now())


class Architecture(Base):
    __tablename__ = "architectures"
    __table_args__ = (
        # The cache key. A score is the GHN's: another checkpoint scores the same graph anew.
        # Also the index for look-ups by content hash (its leading column).
        UniqueConstraint("content_hash", "task", "ghn_version"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    task: Mapped[str] = mapped_column(String(NAME_LENGTH))
    graph: Mapped[str] = mapped_column(Text)  # the nas-graph/1 document, as JSON text
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    flops: Mapped[int] = mapped_column(BigInteger)
    # {"surrogate_accuracy": 0.61, "score_name": "surrogate_accuracy", ...}
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # ArchitectureScorer.ghn_version: the first 16 hex digits of the GHN checkpoint's SHA-256.
    # Not null: NULLs are never equal, so a NULL would slip past the unique key.
    ghn_version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    checkpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"))
    # {"featurize": 0.01, "predict": 0.12, "score": 0.4} in seconds
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=db_now())


class Leased:
    """The columns of a row worked on under a lease (search jobs, adaptation jobs): who runs it,
    the token that proves it and until when (database clock), how often it was claimed, and when
    it was created, first started and finished."""

    lease_owner: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    lease_token: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(default=db_now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class SearchJob(Leased, Base):
    __tablename__ = "search_jobs"
    __table_args__ = (
        Index(None, "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"),
                                              default=JobStatus.QUEUED)
    space: Mapped[str] = mapped_column(String(NAME_LENGTH))
    task: Mapped[str] = mapped_column(String(NAME_LENGTH))
    strategy: Mapped[SearchStrategy] = mapped_column(_enum(SearchStrategy, "search_strategy"))
    seed: Mapped[int] = mapped_column(BigInteger)
    budget_candidates: Mapped[int] = mapped_column(Integer)
    budget_seconds: Mapped[float | None] = mapped_column(Float)
    # {"max_parameters": 1000000, "max_flops": null}
    constraints: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Multi-fidelity rungs, {"rungs": [250, 1000], "eta": 4, "bracket": 16}
    # (nas_service.scoring.fidelity); NULL: every candidate gets the full score.
    fidelity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What candidates are ranked by: {"method": "short-training", "steps": 8}
    # (nas_service.scoring.short_training); NULL: the GHN's score.
    ranking: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # Idempotency: a replayed request with the same key returns this job, unless its body
    # (request_hash) differs.
    idempotency_key: Mapped[str | None] = mapped_column(String(NAME_LENGTH), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))

    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer)
    best_candidate_id: Mapped[str | None] = mapped_column(
        # Circular with candidates.job_id: created after both tables (use_alter).
        ForeignKey("candidates.id", ondelete="SET NULL", use_alter=True))
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        # Candidate i of a job is derived from (seed, i): at most one row per (job, i). Also the
        # index for listing a job's candidates in order.
        UniqueConstraint("job_id", "index"),
        Index(None, "job_id", "score"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    architecture_id: Mapped[str | None] = mapped_column(
        ForeignKey("architectures.id", ondelete="SET NULL"))
    score: Mapped[float | None] = mapped_column(Float)
    status: Mapped[CandidateStatus] = mapped_column(_enum(CandidateStatus, "candidate_status"))
    reason: Mapped[str | None] = mapped_column(Text)  # "over max_parameters", an error message
    num_parameters: Mapped[int | None] = mapped_column(BigInteger)
    flops: Mapped[int | None] = mapped_column(BigInteger)
    seconds: Mapped[float | None] = mapped_column(Float)
    # The fidelity ``score`` was taken at: its rung of the job's schedule (0 first; the job's
    # last rung is the full score, the only one that competes for best) and its validation
    # images. NULL on rows written before multi-fidelity scoring: full scores.
    rung: Mapped[int | None] = mapped_column(Integer)
    eval_images: Mapped[int | None] = mapped_column(Integer)
    # Every rung's score, [{"rung": 0, "images": 250, "score": 0.71, "architecture_id": ...}]
    rung_scores: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=db_now())


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (
        Index(None, "job_id", "id"),
    )

    # SQLite auto-increments only an INTEGER PRIMARY KEY (the rowid), never a BIGINT one.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=db_now())
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any] | None]


class RegisteredTask(Leased, Base):
    """A task registered by upload, and the state of the GHN's adaptation to it (a job of its
    own, leased by workers like a search job: :mod:`nas_service.db.tasks`)."""

    __tablename__ = "registered_tasks"
    __table_args__ = (
        Index(None, "status", "created_at"),
    )

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    format: Mapped[str] = mapped_column(String(32))  # npz, idx, cifar-python
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    train_images: Mapped[int] = mapped_column(Integer)
    test_images: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)  # the folder of train.npz, test.npz, task.json

    # The adaptation job: {"steps", "beta", "probe_architectures", ...} and its outcome.
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "adaptation_status"),
                                              default=JobStatus.QUEUED)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
