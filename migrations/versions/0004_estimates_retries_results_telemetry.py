"""estimates, retry lineage, error positions and engine telemetry per static batch

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("estimate", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("batches", sa.Column("parent_batch_id", sa.String(length=64), nullable=True))
    op.create_foreign_key("fk_batches_parent", "batches", "batches", ["parent_batch_id"], ["id"])
    op.create_index("ix_batches_parent_batch_id", "batches", ["parent_batch_id"])
    op.add_column("batch_runs", sa.Column("error_lines", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("batch_runs", sa.Column("engine_stats", postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column("batch_runs", "engine_stats")
    op.drop_column("batch_runs", "error_lines")
    op.drop_index("ix_batches_parent_batch_id", table_name="batches")
    op.drop_constraint("fk_batches_parent", "batches", type_="foreignkey")
    op.drop_column("batches", "parent_batch_id")
    op.drop_column("batches", "estimate")
