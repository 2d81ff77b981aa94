"""claim order on shards: the batch's priority and creation time, with partial indexes
for the claim's two walks (waiting shards in claim order, running shards by lease)

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("shards", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "shards",
        sa.Column("batch_created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute(
        "UPDATE shards s SET priority = b.priority, batch_created_at = b.created_at "
        "FROM batches b WHERE b.id = s.batch_id"
    )
    op.create_index(
        "ix_shards_claim_order",
        "shards",
        [sa.text("priority DESC"), "batch_created_at", "batch_id", "index"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_shards_running_lease", "shards", ["lease_expires_at"], postgresql_where=sa.text("status = 'running'")
    )


def downgrade() -> None:
    op.drop_index("ix_shards_running_lease", table_name="shards")
    op.drop_index("ix_shards_claim_order", table_name="shards")
    op.drop_column("shards", "batch_created_at")
    op.drop_column("shards", "priority")
