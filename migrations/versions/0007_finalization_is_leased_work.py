"""finalization is leased work: whoever joins a job's results (or ends a cancelled or
expired job where it got to) holds a lease on the job, renewed while it works; if it
dies, another process takes the job over when the lease runs out

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("finalizer_id", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("finalize_lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("finalize_attempts", sa.Integer(), server_default="0", nullable=False))
    op.create_index(
        "ix_jobs_to_finalize",
        "jobs",
        ["finalize_lease_expires_at"],
        postgresql_where=sa.text("status IN ('finalizing', 'cancelling', 'expiring')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_to_finalize", table_name="jobs")
    op.drop_column("jobs", "finalize_attempts")
    op.drop_column("jobs", "finalize_lease_expires_at")
    op.drop_column("jobs", "finalizer_id")
