"""a batch size fitted to the engine, and what a job cost: jobs.batch_size may be unset
until the first claimant sizes it from its engine (jobs.batch_size_basis says how), and
windows and jobs record the accelerator-seconds they held (wall time x tensor parallel)

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("jobs", "batch_size", existing_type=sa.Integer(), nullable=True)
    op.add_column("jobs", sa.Column("batch_size_basis", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("accelerator_seconds", sa.Float(), server_default="0", nullable=False))
    op.add_column("windows", sa.Column("accelerator_seconds", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("windows", "accelerator_seconds")
    op.drop_column("jobs", "accelerator_seconds")
    op.drop_column("jobs", "batch_size_basis")
    op.execute("UPDATE jobs SET batch_size = 256 WHERE batch_size IS NULL")
    op.alter_column("jobs", "batch_size", existing_type=sa.Integer(), nullable=False)
