"""the Ray dashboard page of a job's current attempt

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:30:00

Written by hand from ``service.db.models``. ``jobs.ray_run_url`` is the dashboard page of the job's
latest attempt (its Ray task, under the dispatcher's Ray job), set once the attempt is launched; the
API's ``ray_dashboard_url`` is that page instead of the dashboard's front page.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("ray_run_url", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("ray_run_url")
