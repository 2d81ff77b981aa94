"""prefix cache hits: prompt tokens the engine found already computed (vLLM's prefix
caching), per window and per job, reported as usage.input_tokens_details.cached_tokens

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("windows", sa.Column("cached_tokens", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("cached_tokens", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("jobs", "cached_tokens")
    op.drop_column("windows", "cached_tokens")
