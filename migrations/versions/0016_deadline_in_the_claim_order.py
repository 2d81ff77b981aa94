"""deadline in the claim order: a shard carries its job's deadline (expires_at cut to the
hour), and the claim index orders by priority, then deadline, then owner, so a `1h` batch
is claimed before a `24h` one of the same priority

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "shards", sa.Column("deadline_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)
    )
    op.execute("UPDATE shards s SET deadline_at = date_trunc('hour', j.expires_at) FROM jobs j WHERE j.id = s.job_id")
    op.drop_index("ix_shards_owner_claim_order", table_name="shards")
    op.create_index(
        "ix_shards_owner_claim_order",
        "shards",
        [sa.text("priority DESC"), "deadline_at", "owner", "job_created_at", "job_id", "index"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_shards_owner_claim_order", table_name="shards")
    op.create_index(
        "ix_shards_owner_claim_order",
        "shards",
        [sa.text("priority DESC"), "owner", "job_created_at", "job_id", "index"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.drop_column("shards", "deadline_at")
