"""run input: a job whose lines share prompt prefixes out of order runs them from a copy of
its input regrouped by prefix (app.jobs.run_order); null runs the input as it is

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_input", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "run_input")
