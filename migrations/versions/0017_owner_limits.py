"""owner limits: an admin's overrides of an owner's quotas (stored bytes, queued prompt
tokens per model, batches not yet ended); a null keeps the settings' default

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owner_limits",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("queued_prompt_tokens", sa.BigInteger(), nullable=True),
        sa.Column("open_batches", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("owner_limits")
