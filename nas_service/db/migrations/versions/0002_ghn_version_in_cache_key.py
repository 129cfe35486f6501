"""The architecture cache is keyed by (content hash, task, GHN version).

A stored score is the GHN's that produced it: once another GHN checkpoint is deployed, the same
graph must be scored again, not answered with the old score. ``ghn_version`` becomes NOT NULL
(NULLs are never equal, so a NULL would slip past the unique key); rows without one get
``'unknown'``, which no GHN's version (16 hex digits) matches, so they are never served from the
cache again.

Downgrading restores one row per (content hash, task): of several, the newest stays, and
candidates that pointed at the others point at it.

Revision ID: 0002_ghn_version_in_cache_key
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ghn_version_in_cache_key"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNKNOWN_GHN_VERSION = "unknown"
GHN_VERSION = sa.String(length=128)

# A downgrade keeps, of each (content hash, task) group, the newest row (ties: the largest id).
# Correlated subqueries that SQLite and PostgreSQL both run.
_REPOINT_CANDIDATES = """
UPDATE candidates SET architecture_id = (
    SELECT k.id FROM architectures k
    JOIN architectures a ON k.content_hash = a.content_hash AND k.task = a.task
    WHERE a.id = candidates.architecture_id
    ORDER BY k.created_at DESC, k.id DESC LIMIT 1)
WHERE architecture_id IS NOT NULL
"""
_DELETE_ALL_BUT_NEWEST = """
DELETE FROM architectures WHERE id <> (
    SELECT k.id FROM architectures k
    WHERE k.content_hash = architectures.content_hash AND k.task = architectures.task
    ORDER BY k.created_at DESC, k.id DESC LIMIT 1)
"""


def upgrade() -> None:
    op.execute(sa.text("UPDATE architectures SET ghn_version = :unknown "
                       "WHERE ghn_version IS NULL").bindparams(unknown=UNKNOWN_GHN_VERSION))
    with op.batch_alter_table("architectures") as batch:
        batch.alter_column("ghn_version", existing_type=GHN_VERSION, nullable=False)
        batch.drop_constraint(op.f("uq_architectures_content_hash_task"), type_="unique")
        batch.create_unique_constraint(op.f("uq_architectures_content_hash_task_ghn_version"),
                                       ["content_hash", "task", "ghn_version"])


def downgrade() -> None:
    op.execute(sa.text(_REPOINT_CANDIDATES))
    op.execute(sa.text(_DELETE_ALL_BUT_NEWEST))
    with op.batch_alter_table("architectures") as batch:
        batch.drop_constraint(op.f("uq_architectures_content_hash_task_ghn_version"),
                              type_="unique")
        batch.create_unique_constraint(op.f("uq_architectures_content_hash_task"),
                                       ["content_hash", "task"])
        batch.alter_column("ghn_version", existing_type=GHN_VERSION, nullable=True)
