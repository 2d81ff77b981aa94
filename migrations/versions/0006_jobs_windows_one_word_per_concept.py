"""one word per concept: `batches` is `jobs`, `batch_runs` is `windows` (one recorded
window of one or more static batches, counted in `static_batches`), and the columns
that point at a job are `job_id`

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED_COLUMNS = [
    ("jobs", "parent_batch_id", "parent_job_id"),
    ("jobs", "first_batch_at", "first_window_at"),
    ("shards", "batch_id", "job_id"),
    ("shards", "batch_created_at", "job_created_at"),
    ("shards", "batches_done", "windows_done"),
    ("windows", "batch_id", "job_id"),
]


def upgrade() -> None:
    op.rename_table("batches", "jobs")
    op.rename_table("batch_runs", "windows")
    for table, old, new in RENAMED_COLUMNS:
        op.alter_column(table, old, new_column_name=new)
    op.add_column("windows", sa.Column("static_batches", sa.Integer(), server_default="1", nullable=False))
    # A packed window recorded before this column counted its static batches in its telemetry.
    op.execute(
        "UPDATE windows SET static_batches = (engine_stats->>'static_batches')::int "
        "WHERE engine_stats ? 'static_batches'"
    )


def downgrade() -> None:
    op.drop_column("windows", "static_batches")
    for table, old, new in reversed(RENAMED_COLUMNS):
        op.alter_column(table, new, new_column_name=old)
    op.rename_table("windows", "batch_runs")
    op.rename_table("jobs", "batches")
