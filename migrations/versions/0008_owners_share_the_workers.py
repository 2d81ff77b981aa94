"""owners share the workers: each shard carries its job's owner, and `owner_turns`
remembers when each owner's work was last claimed, so claims go round the owners
(least served first) within a priority instead of strictly oldest first

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("shards", sa.Column("owner", sa.String(128), server_default="", nullable=False))
    op.execute("UPDATE shards s SET owner = j.owner FROM jobs j WHERE j.id = s.job_id")
    op.create_table(
        "owner_turns",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("owner_turns")
    op.drop_column("shards", "owner")
