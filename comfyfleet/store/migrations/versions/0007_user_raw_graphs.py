"""user permission raw_graphs: may submit raw ComfyUI graphs (admins always may)

Revision ID: 0007_user_raw_graphs
Revises: 0006_job_parent_run
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_user_raw_graphs"
down_revision: str | None = "0006_job_parent_run"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("raw_graphs", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("raw_graphs")
