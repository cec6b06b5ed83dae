"""dispatcher heartbeats: the dispatchers table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 23:30:30

Generated with ``alembic revision --autogenerate`` from ``service.db.models`` and reviewed by hand.
One row per dispatcher process, upserted every ``heartbeat_s``; ``/metrics`` reads it at scrape time.
The index goes through batch mode, as Alembic renders it for SQLite (a plain CREATE INDEX elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatchers",
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("running_attempts", sa.Integer(), nullable=False),
        sa.Column("claims", sa.BigInteger(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("owner", name="pk_dispatchers"),
    )
    # /metrics reads the recently beating dispatchers.
    with op.batch_alter_table("dispatchers") as batch_op:
        batch_op.create_index("ix_dispatchers_heartbeat_at", ["heartbeat_at"])


def downgrade() -> None:
    # The index goes with its table.
    op.drop_table("dispatchers")
