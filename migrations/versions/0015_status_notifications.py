"""status notifications: a job's status change notifies `llm_batch_status` with its id,
so long polls (`GET /v1/batches/{id}?wait=`) answer the moment it changes

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "llm_batch_status"  # app.data.models.STATUS_CHANNEL


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION llm_batch_status_notify() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.id);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_status_notify AFTER UPDATE OF status ON jobs
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION llm_batch_status_notify()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_status_notify ON jobs")
    op.execute("DROP FUNCTION llm_batch_status_notify()")
