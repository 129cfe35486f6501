"""Multi-fidelity scoring: a search job's rungs, and the fidelity of each candidate's score.

``search_jobs.fidelity`` holds a job's schedule (``{"rungs", "eta", "bracket"}``; NULL: every
candidate gets the full score, as before). ``candidates.rung`` and ``candidates.eval_images`` say
at which rung, on how many validation images, ``candidates.score`` was taken;
``candidates.rung_scores`` keeps every rung's score. Existing rows keep NULL there: their
scores are full scores.

Revision ID: 0003_candidate_fidelity
Revises: 0002_ghn_version_in_cache_key
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_candidate_fidelity"
down_revision: str | Sequence[str] | None = "0002_ghn_version_in_cache_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("search_jobs") as batch:
        batch.add_column(sa.Column("fidelity", sa.JSON(), nullable=True))
    with op.batch_alter_table("candidates") as batch:
        batch.add_column(sa.Column("rung", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("eval_images", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rung_scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("rung_scores")
        batch.drop_column("eval_images")
        batch.drop_column("rung")
    with op.batch_alter_table("search_jobs") as batch:
        batch.drop_column("fidelity")
