"""Initial schema: architectures, search_jobs, candidates, job_events, checkpoints.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations never import the models: a revision must keep creating the schema it created on the
# day it was written, whatever the models become.
UTC_DATETIME = sa.DateTime(timezone=True)


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "search_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", _enum("job_status", "queued", "running", "succeeded", "failed",
                                  "cancelled"), nullable=False),
        sa.Column("space", sa.String(length=128), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("strategy", _enum("search_strategy", "random", "evolution"), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("budget_candidates", sa.Integer(), nullable=False),
        sa.Column("budget_seconds", sa.Float(), nullable=True),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        # Its foreign key to candidates is added once candidates exists (below).
        sa.Column("best_candidate_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", UTC_DATETIME, nullable=True),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_search_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_search_jobs_status_created_at"), "search_jobs",
                    ["status", "created_at"])

    op.create_table(
        "architectures",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("graph", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("num_parameters", sa.BigInteger(), nullable=False),
        sa.Column("flops", sa.BigInteger(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("ghn_version", sa.String(length=128), nullable=True),
        sa.Column("checkpoint_id", sa.String(length=64), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"],
                                name=op.f("fk_architectures_checkpoint_id_checkpoints"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_architectures")),
        sa.UniqueConstraint("content_hash", "task",
                            name=op.f("uq_architectures_content_hash_task")),
    )

    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["search_jobs.id"],
                                name=op.f("fk_job_events_job_id_search_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id_id"), "job_events", ["job_id", "id"])

    op.create_table(
        "candidates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("architecture_id", sa.String(length=32), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("status", _enum("candidate_status", "scored", "rejected", "failed"),
                  nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("num_parameters", sa.BigInteger(), nullable=True),
        sa.Column("flops", sa.BigInteger(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["architecture_id"], ["architectures.id"],
                                name=op.f("fk_candidates_architecture_id_architectures"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["job_id"], ["search_jobs.id"],
                                name=op.f("fk_candidates_job_id_search_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("job_id", "index", name=op.f("uq_candidates_job_id_index")),
    )
    op.create_index(op.f("ix_candidates_job_id_score"), "candidates", ["job_id", "score"])

    # search_jobs and candidates refer to each other. SQLite adds a constraint by rebuilding the
    # table (batch mode), which is instant while it is empty.
    with op.batch_alter_table("search_jobs") as batch:
        batch.create_foreign_key(op.f("fk_search_jobs_best_candidate_id_candidates"),
                                 "candidates", ["best_candidate_id"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("search_jobs") as batch:
        batch.drop_constraint(op.f("fk_search_jobs_best_candidate_id_candidates"),
                              type_="foreignkey")
    op.drop_index(op.f("ix_candidates_job_id_score"), table_name="candidates")
    op.drop_table("candidates")
    op.drop_index(op.f("ix_job_events_job_id_id"), table_name="job_events")
    op.drop_table("job_events")
    op.drop_table("architectures")
    op.drop_index(op.f("ix_search_jobs_status_created_at"), table_name="search_jobs")
    op.drop_table("search_jobs")
    op.drop_table("checkpoints")
