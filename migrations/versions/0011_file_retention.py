"""file retention: each file may expire (`files.expires_at`, OpenAI's `expires_after`),
a batch carries how long its output and error files are kept
(`jobs.output_expires_after_seconds`), and the sweeper finds expired files, the live
jobs that still read them and the jobs whose output they are through indexes. Files
from before this revision have no expiry: they are kept until deleted.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("files", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("output_expires_after_seconds", sa.Integer(), nullable=True))
    op.create_index(
        "ix_files_expiry",
        "files",
        ["expires_at"],
        postgresql_where=sa.text("deleted_at IS NULL AND expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_live_input",
        "jobs",
        ["input_file_id"],
        postgresql_where=sa.text("status NOT IN ('cancelled', 'completed', 'expired', 'failed')"),
    )
    op.create_index("ix_jobs_output_file", "jobs", ["output_file_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_output_file", table_name="jobs")
    op.drop_index("ix_jobs_live_input", table_name="jobs")
    op.drop_index("ix_files_expiry", table_name="files")
    op.drop_column("jobs", "output_expires_after_seconds")
    op.drop_column("files", "expires_at")
