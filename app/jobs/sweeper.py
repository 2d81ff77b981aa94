"""The sweeper: a thread in each API process that moves overdue jobs to `expiring`,
finalizes jobs that wait for it (a cancelled job with nothing running, a job whose
finalizer died), deletes expired files (app.jobs.retention) and the parts of uploads that
ended (app.jobs.upload_parts). Workers finalize too;
the sweeper is what makes every job end even when no worker is up."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from app.core.abandoned_writes import AbandonedWrites
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.data.uploads import Uploads
from app.jobs.finalize import finalize_next
from app.jobs.retention import delete_expired
from app.jobs.upload_parts import sweep_uploads

log = logging.getLogger(__name__)

MAX_FINALIZATIONS_PER_SWEEP = 100  # the rest wait for the next sweep (or a worker)
MAX_ABANDONED_WRITES_SECONDS = 3600.0  # abandoned writes are looked for at least this often


def sweep(
    records: Records,
    queue: JobQueue,
    store: ObjectStore,
    finalizer_id: str,
    lease_seconds: float,
    max_attempts: int,
    poked: Iterable[str] = (),
    gpu_hour_price: float | None = None,
) -> list[str]:
    """One sweep: expire what is overdue, finalize the `poked` jobs (just cancelled: each
    claimed by id, waiting out a transaction that holds its row rather than passing it
    over), then whatever else waits, then delete expired files (up to
    MAX_EXPIRED_FILES_PER_SWEEP; inputs of jobs that have not ended wait), then expire
    overdue uploads and remove the parts of ended ones. Returns the finalized ids."""
    for job_id in queue.expire_due():
        log.info("%s is past its completion window: expiring", job_id)
    finalized = [
        done
        for job_id in poked
        if (
            done := finalize_next(
                records, queue, store, finalizer_id, lease_seconds, max_attempts, job_id, gpu_hour_price=gpu_hour_price
            )
        )
    ]
    while len(finalized) < MAX_FINALIZATIONS_PER_SWEEP:
        done = finalize_next(
            records, queue, store, finalizer_id, lease_seconds, max_attempts, gpu_hour_price=gpu_hour_price
        )
        if done is None:
            break
        finalized.append(done)
    delete_expired(records, store)
    sweep_uploads(Uploads(records.db), store)
    return finalized


class Sweeper:
    """Runs `sweep` every `interval_seconds` on a daemon thread; `poke` runs one sooner."""

    def __init__(
        self,
        records: Records,
        queue: JobQueue,
        store: ObjectStore,
        *,
        interval_seconds: float,
        lease_seconds: float,
        max_attempts: int,
        gpu_hour_price: float | None = None,
        temporary_object_max_age_seconds: float | None = None,
    ) -> None:
        self._args = (records, queue, store, f"api-{socket.gethostname()}-{os.getpid()}", lease_seconds, max_attempts)
        self._abandoned_writes = AbandonedWrites(store)
        self._gpu_hour_price = gpu_hour_price
        self._temporary_max_age = temporary_object_max_age_seconds
        self._abandoned_writes_due = 0.0  # looked for at the first sweep
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._poked = threading.Event()
        self._poked_jobs: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self, job_id: str) -> None:
        """Sweeps now (a cancel of `job_id` was recorded) instead of at the next interval."""
        with self._lock:
            self._poked_jobs.append(job_id)
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        self._thread.join(timeout=self._interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poked.wait(self._interval)
            self._poked.clear()
            if self._stop.is_set():
                return
            with self._lock:
                poked, self._poked_jobs = self._poked_jobs, []
            try:
                sweep(*self._args, poked=poked, gpu_hour_price=self._gpu_hour_price)
            except Exception:  # the database may be briefly away; the next sweep retries
                log.exception("sweep failed")
            self._remove_abandoned_writes()

    def _remove_abandoned_writes(self) -> None:
        """Every quarter of the writes' longest life (at most hourly), the temporary
        objects of writes that never finished are removed (app.core.abandoned_writes)."""
        max_age = self._temporary_max_age
        if max_age is None or time.monotonic() < self._abandoned_writes_due:
            return
        self._abandoned_writes_due = time.monotonic() + min(max_age / 4, MAX_ABANDONED_WRITES_SECONDS)
        try:
            removed = self._abandoned_writes.remove(max_age)
        except Exception:  # storage briefly away: the next round retries
            log.exception("looking for abandoned writes failed")
            return
        if removed.writes:
            log.info("removed %d abandoned writes (%d bytes)", removed.writes, removed.bytes)
