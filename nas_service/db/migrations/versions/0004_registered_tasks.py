"""Registered tasks: datasets users upload, and the GHN's adaptation job for each.

``registered_tasks`` holds one row per uploaded task (its shape, classes, where its files lie)
with the state of the background job that teaches the GHN the task: status, lease, attempts,
progress, settings and result, as ``search_jobs`` has them.

Revision ID: 0004_registered_tasks
Revises: 0003_candidate_fidelity
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_registered_tasks"
down_revision: str | Sequence[str] | None = "0003_candidate_fidelity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registered_tasks",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("train_images", sa.Integer(), nullable=False),
        sa.Column("test_images", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.Enum("queued", "running", "succeeded", "failed", "cancelled",
                                    name="adaptation_status", native_enum=False,
                                    create_constraint=True, length=16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", UTC_DATETIME, nullable=True),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_registered_tasks")),
    )
    op.create_index(op.f("ix_registered_tasks_status_created_at"), "registered_tasks",
                    ["status", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_registered_tasks_status_created_at"), table_name="registered_tasks")
    op.drop_table("registered_tasks")
