"""Expired files, found and marked deleted for the sweeper (app.jobs.retention).

One statement finds up to `limit` live files past their `expires_at` that no job
which has not ended reads as its input, and locks them `FOR UPDATE SKIP LOCKED`:
several API processes sweeping at once each take different files, and a file
being deleted by hand (`Records.delete_file` locks it too) or being made the
input of a new job (the job's foreign key locks it `FOR KEY SHARE`) is skipped
and tried at a later sweep; once they are locked, the live jobs are looked up
again. The caller removes each file's objects while the rows stay locked; the ones
it removed are marked deleted in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, text, update

from app.core.database import Database
from app.data.models import ENDED_SQL, TERMINAL_STATUSES, FileRecord, Job

EXPIRED_FILES_SQL = text(
    f"""
    SELECT f.id, f.storage_key, j.id AS output_of_job
    FROM files f
    LEFT JOIN jobs j ON j.output_file_id = f.id
    WHERE f.deleted_at IS NULL AND f.expires_at IS NOT NULL AND f.expires_at <= now()
      AND NOT EXISTS (
        SELECT 1 FROM jobs live WHERE live.input_file_id = f.id AND live.status NOT IN ({ENDED_SQL})
      )
    ORDER BY f.expires_at
    LIMIT :limit
    FOR UPDATE OF f SKIP LOCKED
    """
)


@dataclass(frozen=True)
class ExpiredFile:
    id: str
    storage_key: str
    output_of_job: str | None  # the (ended) job whose output file this is


def delete_expired_files(db: Database, limit: int, remove: Callable[[ExpiredFile], bool]) -> list[str]:
    """Locks up to `limit` expired files no live job reads, calls `remove` on each (it
    deletes the objects and says whether it could) and marks those it removed deleted.
    Returns their ids."""
    with db.session() as session:
        rows = session.execute(EXPIRED_FILES_SQL, {"limit": limit}).all()
        if not rows:
            return []
        # Looked at again now the rows are locked: a job committed between the statement's
        # snapshot and its lock is seen here (a later one waits for the lock, then sees the
        # file deleted: JobQueue.create_job).
        read = set(
            session.scalars(
                select(Job.input_file_id).where(
                    Job.input_file_id.in_([row.id for row in rows]),
                    Job.status.not_in([s.value for s in TERMINAL_STATUSES]),
                )
            )
        )
        expired = [ExpiredFile(row.id, row.storage_key, row.output_of_job) for row in rows if row.id not in read]
        removed = [file.id for file in expired if remove(file)]
        if removed:
            session.execute(update(FileRecord).where(FileRecord.id.in_(removed)).values(deleted_at=func.now()))
        return removed
