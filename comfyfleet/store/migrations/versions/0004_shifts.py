"""shifts: the long-lived flow run working each node

Revision ID: 0004_shifts
Revises: 0003_webhooks
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from comfyfleet.store.types import UTCDateTime

revision: str = "0004_shifts"
down_revision: str | None = "0003_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "shifts",
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("shift_id", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_shifts")),
        **MYSQL,
    )
    op.create_index("ix_attempts_node_holder", "attempts", ["node", "flow_run_id"])


def downgrade() -> None:
    op.drop_index("ix_attempts_node_holder", table_name="attempts")
    op.drop_table("shifts")
