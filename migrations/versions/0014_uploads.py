"""uploads: OpenAI's Uploads API (a file sent in parts, each part an object of its own
until the upload completes into a file)

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("file_expires_after_seconds", sa.Integer(), nullable=True),
        sa.Column("file_id", sa.String(64), sa.ForeignKey("files.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parts_removed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_uploads_owner", "uploads", ["owner"])
    op.create_index(
        "ix_uploads_pending_expiry", "uploads", ["expires_at"], postgresql_where=sa.text("status = 'pending'")
    )
    op.create_index(
        "ix_uploads_parts_left",
        "uploads",
        ["created_at"],
        postgresql_where=sa.text("status <> 'pending' AND parts_removed_at IS NULL"),
    )
    op.create_table(
        "upload_parts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("upload_id", sa.String(64), sa.ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_upload_parts_upload_id", "upload_parts", ["upload_id"])


def downgrade() -> None:
    op.drop_table("upload_parts")
    op.drop_table("uploads")
