"""claim order per owner: waiting shards indexed by priority, owner, then job age and
shard order, so a claim picks the owner first (a skip scan over the few owners with
work waiting) and then that owner's first shard, instead of sorting every waiting
shard by its owner's share (104 ms a claim with 10,000 jobs queued).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_shards_owner_claim_order",
        "shards",
        [sa.text("priority DESC"), "owner", "job_created_at", "job_id", "index"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    # Its leading column serves the top-priority probe too; with two indexes led by
    # priority, a planner without statistics took the one without owner and sorted.
    op.drop_index("ix_shards_claim_order", table_name="shards")


def downgrade() -> None:
    op.create_index(
        "ix_shards_claim_order",
        "shards",
        [sa.text("priority DESC"), "job_created_at", "job_id", "index"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.drop_index("ix_shards_owner_claim_order", table_name="shards")
