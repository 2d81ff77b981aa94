"""File retention, in OpenAI's terms: a file expires `seconds` after its `created_at`
(`expires_after` on upload, a batch's `output_expires_after` for its output and error
files), else after the server's FILE_RETENTION_DAYS (0: kept until deleted).

The sweeper (app.jobs.sweeper) deletes expired files, a bounded number per sweep: the
object, then the row (soft-deleted, as `DELETE /v1/files/{id}` does), and for an ended
job's output file the job's result parts and `stats.json` under `batches/<job>/` too
(results so far read the parts until then), so storage does not grow with every job.
A file that a job which has not ended reads as its input waits for that job to end.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.core.storage import ObjectStore
from app.data.records import Records
from app.data.retention import ExpiredFile, delete_expired_files
from app.jobs.line_index import index_key

log = logging.getLogger(__name__)

# OpenAI's limits on `expires_after` and `output_expires_after`.
EXPIRY_ANCHORS = ("created_at",)
MIN_EXPIRES_AFTER_SECONDS = 3600  # 1 hour
MAX_EXPIRES_AFTER_SECONDS = 2_592_000  # 30 days
MAX_EXPIRED_FILES_PER_SWEEP = 100  # the rest wait for the next sweep


def retention_seconds(expires_after_seconds: int | None, default_days: int) -> int | None:
    """How long a new file is kept: what the request asked for, else the server's default
    (None: until deleted)."""
    if expires_after_seconds is not None:
        return expires_after_seconds
    return default_days * 86_400 if default_days > 0 else None


def expiry(created_at: datetime, seconds: int | None) -> datetime | None:
    return created_at + timedelta(seconds=seconds) if seconds is not None else None


def job_prefix(job_id: str) -> str:
    """Where a job's own objects live: its result parts (app.jobs.output_lines.part_key)
    and `stats.json` (the same figures stay in `GET /v1/batches/{id}/stats`)."""
    return f"batches/{job_id}/"


def remove_stored(store: ObjectStore, storage_key: str) -> None:
    """A stored file's objects: the file and its line index (none for a file uploaded before
    indexes, or not batch input)."""
    store.delete(storage_key)
    store.delete(index_key(storage_key))


def remove_file_objects(store: ObjectStore, storage_key: str, output_of_job: str | None) -> None:
    """A deleted file's object, and for the output file of an ended job the job's own
    objects: the joined output holds its parts, and results so far read them only until
    the output is gone. A batch input file's line index goes with it."""
    remove_stored(store, storage_key)
    if output_of_job is not None:
        store.delete_prefix(job_prefix(output_of_job))


def delete_expired(records: Records, store: ObjectStore, limit: int = MAX_EXPIRED_FILES_PER_SWEEP) -> list[str]:
    """Deletes up to `limit` expired files that no live job reads; returns their ids. A
    file whose objects could not be removed (storage away) stays for a later sweep."""

    def remove(expired: ExpiredFile) -> bool:
        try:
            remove_file_objects(store, expired.storage_key, expired.output_of_job)
        except Exception:
            log.warning("could not delete expired file %s; a later sweep retries", expired.id, exc_info=True)
            return False
        return True

    deleted = delete_expired_files(records.db, limit, remove)
    if deleted:
        log.info("deleted %d expired files", len(deleted))
    return deleted
