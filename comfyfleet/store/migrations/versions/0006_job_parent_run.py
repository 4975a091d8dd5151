"""job parent run: the Prefect flow run that queued a job (a routed or batch run)

Revision ID: 0006_job_parent_run
Revises: 0005_single_use_join_tokens
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_job_parent_run"
down_revision: str | None = "0005_single_use_join_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_run", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent_run")
