"""Expiry: batches still unfinished at `expires_at` end `expired`, keeping what was done."""

from __future__ import annotations

import logging
import threading

from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.finalize import finalize_job

log = logging.getLogger(__name__)


def expire_overdue(records: Records, queue: JobQueue, store: ObjectStore) -> list[str]:
    """Marks overdue batches `expiring`; those with no running shard are finalized here,
    the others by their worker at its next batch boundary. Returns the marked ids
    that were finalized here."""
    finalized = queue.expire_due()
    for job_id in finalized:
        finalize_job(records, queue, store, job_id)
        log.info("expired %s", job_id)
    return finalized


class ExpirySweeper:
    """A daemon thread in the API process that runs `expire_overdue` periodically."""

    def __init__(self, records: Records, queue: JobQueue, store: ObjectStore, interval_seconds: float) -> None:
        self._records = records
        self._queue = queue
        self._store = store
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="expiry-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                expire_overdue(self._records, self._queue, self._store)
            except Exception:  # the database may be briefly away; the next sweep retries
                log.exception("expiry sweep failed")
