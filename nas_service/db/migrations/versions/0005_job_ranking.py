"""What a search job ranks its candidates by.

``search_jobs.ranking`` holds a job's ranking (``{"method": "short-training", "steps": 8}``: each
candidate's accuracy after a few SGD steps from its default initialisation); NULL: the GHN's
score, as before.

Revision ID: 0005_job_ranking
Revises: 0004_registered_tasks
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_job_ranking"
down_revision: str | Sequence[str] | None = "0004_registered_tasks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("search_jobs") as batch:
        batch.add_column(sa.Column("ranking", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("search_jobs") as batch:
        batch.drop_column("ranking")
