"""The service's settings: one pydantic-settings class, read from ``NAS_*`` environment variables.

The library (graph, spaces, data, ghn, training) never reads this module; the API, the workers and
the command line do, through :func:`get_settings`. Every field can be set by an environment
variable named ``NAS_<FIELD>`` (``NAS_DATABASE_URL``, ``NAS_API_KEYS``, ...), or by keyword in
tests (``Settings(data_dir=tmp_path)``).

Defaults are for one person on one machine (``make run``): a SQLite file and checkpoints under
``./data`` (relative to the working directory when the settings are read, then made absolute), no
API keys. ``NAS_ENVIRONMENT=production`` turns the unsafe defaults into start-up errors: see
:meth:`Settings._refuse_unsafe_production_defaults`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nas_service.scoring.protocol import (
    DEFAULT_EVAL_IMAGES,
    DEFAULT_MAX_SCORING_BYTES,
    DEFAULT_MAX_SCORING_MACS,
    DEFAULT_SCORING_TIMEOUT_SECONDS,
    RECALIBRATION_BATCH_SIZE,
    RECALIBRATION_BATCHES,
)

SQLITE_FILE_NAME = "nas.db"
CHECKPOINTS_DIR_NAME = "checkpoints"
TASKS_DIR_NAME = "tasks"
ADAPTED_GHN_DIR_NAME = "ghn"


class Settings(BaseSettings):
    """Everything the service can be told at start-up.

    Derived defaults: ``database_url`` defaults to ``sqlite:///<data_dir>/nas.db`` and
    ``checkpoint_dir`` to ``<data_dir>/checkpoints``, so setting ``NAS_DATA_DIR`` alone moves all
    state. Paths are made absolute when the settings are built, so a later ``chdir`` does not move
    the database.
    """

    model_config = SettingsConfigDict(
        env_prefix="NAS_",
        # Other NAS_* variables belong to the library (NAS_DATASETS_DIR) or to the container's
        # entry point (NAS_MIGRATE, NAS_DB_WAIT_SECONDS): not ours to reject.
        extra="ignore",
        validate_default=True,
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty: <data_dir>/nas.db")
    checkpoint_dir: Path | None = None
    device: str | None = Field(default=None, description="cpu, cuda, cuda:N; None: automatic")

    # Secrets stay out of repr() and so out of logs and tracebacks.
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    allow_anonymous: bool = False

    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)

    # The surrogate (nas_service.scoring.scorer) and the workers.
    ghn_path: Path | None = Field(default=None,
                                  description="GHN checkpoint; None: the bundled Fashion-MNIST GHN")
    worker_in_process: bool = Field(default=True, description="`serve` also runs a worker")
    # In a child process (nas_service.api.workers), started again when it dies or gets stuck in
    # scoring, and whose Python does not compete with the API's requests; false: a thread of
    # the API process.
    worker_process: bool = Field(default=True,
                                 description="`serve`'s worker runs in a child process of its "
                                             "own; false: in a thread of the API process")
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    ghn_batch_size: int = Field(default=8, ge=1, le=256,
                                description="graphs per GHN forward pass in a search")
    eval_images: int | None = Field(default=DEFAULT_EVAL_IMAGES, gt=0,
                                    description="validation images per score (the first N of "
                                                "the fixed split); 'all' or blank: all of them")
    recalibration_batches: int = Field(default=RECALIBRATION_BATCHES, ge=1)
    recalibration_batch_size: int = Field(default=RECALIBRATION_BATCH_SIZE, ge=1)
    # What the API accepts, tighter than the graph layer's own limits: every accepted graph is
    # built and evaluated on this machine.
    max_graph_nodes: int = Field(default=2048, ge=2)
    max_graph_parameters: int = Field(default=50_000_000, ge=1)
    max_graph_flops: int = Field(default=20_000_000_000, ge=1)
    max_search_candidates: int = Field(default=10_000, ge=1)
    # Admission control (nas_service.scoring.cost): what scoring one graph may cost, estimated
    # from its shapes before it runs. The API refuses a graph over either with a 422 problem; a
    # worker records such a candidate as rejected.
    max_scoring_bytes: int = Field(default=DEFAULT_MAX_SCORING_BYTES, ge=1,
                                   description="peak memory of scoring one graph, in bytes")
    max_scoring_macs: int = Field(default=DEFAULT_MAX_SCORING_MACS, ge=1,
                                  description="multiply-accumulates of scoring one graph")
    # Slow clients: a request whose headers or body have not all arrived after this long is
    # answered 408 and its connection closed.
    request_read_seconds: float = Field(default=15.0, gt=0)
    # The API's cache misses are scored in processes of their own (nas_service.api.
    # scoring_processes), so that their Python does not compete with the API's requests for
    # one interpreter lock; 0 scores them in a thread of the API process.
    scoring_processes: int = Field(default=1, ge=0, le=64,
                                   description="processes scoring the API's cache misses")
    scoring_queue: int = Field(default=32, ge=1,
                               description="distinct architectures waiting to be scored before "
                                           "the API answers 503")
    scoring_batch_size: int = Field(default=8, ge=1, le=256,
                                    description="waiting architectures per GHN forward pass")
    scoring_timeout_seconds: float = Field(
        default=DEFAULT_SCORING_TIMEOUT_SECONDS, gt=0,
        description="seconds a scoring process may take per architecture of a batch before it "
                    "is killed (the batch answered 503) and started again")
    scoring_threads: int | None = Field(
        default=None, ge=1, le=256,
        description="torch threads of each scoring process; None: one core fewer than the "
                    "machine has (at least 1), so the API's requests keep a core")
    # SIGTERM: requests in flight get this long to finish; then they are cancelled, the
    # worker's job is released to the queue and the scoring processes are stopped.
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)

    # Registered tasks (POST /v1/tasks): what an upload may hold, where it is kept, and the
    # background job that adapts the GHN to it (nas_service.search.adaptation).
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0,
                                  description="request body of POST /v1/tasks, in bytes")
    max_upload_images: int = Field(default=100_000, ge=1)
    max_task_image_side: int = Field(default=64, ge=8, le=512)
    max_task_classes: int = Field(default=100, ge=2)
    min_task_images_per_class: int = Field(default=10, ge=1)
    tasks_dir: Path | None = Field(default=None, description="None: <data_dir>/tasks")
    adapted_ghn_dir: Path | None = Field(
        default=None, description="the adapted GHN and its task embeddings; None: <data_dir>/ghn")
    adaptation_steps: int = Field(default=300, ge=1, description="GHN updates per added task")
    adaptation_beta: float = Field(default=0.01, ge=0,
                                   description="weight of the output regulariser (when "
                                               "adaptation_lr > 0)")
    adaptation_lr: float = Field(
        default=0.0, ge=0, le=1,
        description="learning rate of the GHN's weights while adapting (with the output "
                    "regulariser, weight adaptation_beta); 0: only the new task's embedding is "
                    "learnt and every earlier task scores exactly as before")
    adaptation_probe_architectures: int = Field(
        default=16, ge=1, description="fixed architectures whose predicted weights the "
                                      "regulariser keeps for every earlier task")
    adaptation_batch_graphs: int = Field(default=4, ge=1, le=64)
    adaptation_batch_images: int = Field(default=64, ge=1, le=1024)
    adaptation_checkpoint_every: int = Field(default=25, ge=1,
                                             description="steps between saved training states")
    adaptation_max_flops: int = Field(default=20_000_000, ge=1,
                                      description="of the architectures adaptation trains on")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        # NAS_API_KEYS="key1,key2": a comma-separated list, blanks and surrounding spaces dropped.
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _blank_device_is_automatic(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @field_validator("ghn_path", "eval_images", "scoring_threads", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("eval_images", mode="before")
    @classmethod
    def _all_images(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "all":
            return None
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.ghn_path is not None:
            self.ghn_path = self.ghn_path.expanduser().resolve()
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.data_dir / CHECKPOINTS_DIR_NAME
        else:
            self.checkpoint_dir = self.checkpoint_dir.expanduser().resolve()
        for name, default in (("tasks_dir", TASKS_DIR_NAME),
                              ("adapted_ghn_dir", ADAPTED_GHN_DIR_NAME)):
            value = getattr(self, name)
            setattr(self, name, self.data_dir / default if value is None
                    else value.expanduser().resolve())
        if not self.database_url.strip():
            self.database_url = f"sqlite:///{self.data_dir / SQLITE_FILE_NAME}"
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be shorter than "
                             f"lease_seconds ({self.lease_seconds:g}), or every lease expires "
                             "between two heartbeats")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Settings:
        """In production, an open API and an in-memory database are mistakes, not choices.

        SQLite itself is allowed (one machine, a few workers: WAL and ``BEGIN IMMEDIATE`` make
        that safe); an anonymous API must be asked for with ``NAS_ALLOW_ANONYMOUS=true``.
        """
        if self.environment != "production":
            return self
        problems = []
        if not self.api_keys and not self.allow_anonymous:
            problems.append("NAS_API_KEYS is empty: set API keys, or NAS_ALLOW_ANONYMOUS=true to "
                            "serve without authentication")
        if _is_in_memory_sqlite(self.database_url):
            problems.append("NAS_DATABASE_URL is an in-memory SQLite database: every connection "
                            "would see a different, empty database")
        if problems:
            raise ValueError("unsafe settings for NAS_ENVIRONMENT=production: "
                             + "; ".join(problems))
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _is_in_memory_sqlite(url: str) -> bool:
    if not url.startswith("sqlite"):
        return False
    path = url.split("://", 1)[-1].lstrip("/")
    return path in ("", ":memory:") or "mode=memory" in url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once. Tests that change the environment
    call ``get_settings.cache_clear()``."""
    return Settings()
