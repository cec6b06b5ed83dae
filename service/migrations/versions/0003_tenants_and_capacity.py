"""tenant quotas and the dispatchers' cluster totals

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 18:00:00

Written by hand from ``service.db.models``. ``tenants`` holds per-tenant overrides of the quota
defaults (a missing row means the defaults); the dispatchers publish their Ray cluster's totals with
each heartbeat, so the API can refuse a job no live cluster could ever hold. Columns are added in
batch mode, as SQLite needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_cpus", sa.Float(), nullable=True),
        sa.Column("max_gpus", sa.Float(), nullable=True),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("max_priority", sa.Integer(), nullable=True),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    with op.batch_alter_table("dispatchers") as batch_op:
        batch_op.add_column(sa.Column("cluster_cpus", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cluster_gpus", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dispatchers") as batch_op:
        batch_op.drop_column("cluster_gpus")
        batch_op.drop_column("cluster_cpus")
    op.drop_table("tenants")
