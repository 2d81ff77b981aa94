"""The worker's life: load the engine once, then claim shards and run them until told to stop."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import replace
from functools import partial
from typing import TypeVar

from app.core.backoff import retry_transient
from app.core.storage import ObjectStore
from app.data.claims import ClaimedShard
from app.data.models import Worker
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.finalize import finalize_next
from worker.engine import Engine, EngineFailed
from worker.shard_runner import DEFAULT_STATIC_BATCHES_IN_FLIGHT, ShardRunner, ShutdownRequested
from worker.sizing import fit_batch_size
from worker.waker import Waker

log = logging.getLogger(__name__)
T = TypeVar("T")

FAILURE_PAUSE_SECONDS = 10.0  # a shard that failed for a reason not the engine's is claimed again after this


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerLoop:
    def __init__(
        self,
        engine: Engine,
        records: Records,
        queue: JobQueue,
        store: ObjectStore,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        poll_seconds: float,
        max_batch_attempts: int = 3,
        max_static_batches_in_flight: int = DEFAULT_STATIC_BATCHES_IN_FLIGHT,
        waker: Waker | None = None,
        worker_id: str | None = None,
        gpu_hour_price: float | None = None,
        failure_pause_seconds: float = FAILURE_PAUSE_SECONDS,
    ) -> None:
        self.failure_pause_seconds = min(failure_pause_seconds, lease_seconds)
        self.waker = waker
        self.gpu_hour_price = gpu_hour_price
        self.engine = engine
        self.records = records
        self.queue = queue
        self.store = store
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.worker_id = worker_id or new_worker_id()
        self.max_batch_attempts = max_batch_attempts
        self.stop_requested = threading.Event()
        self._current: ClaimedShard | None = None
        self.runner = ShardRunner(
            engine,
            queue,
            store,
            self.worker_id,
            lease_seconds,
            self.stop_requested,
            max_batch_attempts,
            max_static_batches_in_flight,
        )

    def register(self) -> None:
        self.records.register_worker(
            Worker(
                id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                model=self.engine.model_name,
                tensor_parallel_size=self.engine.tensor_parallel_size,
                status="ready",
            )
        )

    def _heartbeat(self) -> None:
        while not self.stop_requested.wait(self.heartbeat_seconds):
            current = self._current
            try:
                if current is not None:
                    self.queue.renew_lease(current.shard_id, self.worker_id, self.lease_seconds)
                else:
                    self.records.set_worker_status(self.worker_id, "ready")
            except Exception:  # an outage must not kill the heartbeat; the next beat retries
                log.exception("heartbeat failed")

    def run_once(self) -> bool:
        """Finalizes a job that waits for it, or claims and runs one shard; False when there
        was nothing to do."""
        if self._finalize() is not None:
            return True
        shard = self.queue.claim_shard(self.worker_id, self.engine.model_name, self.lease_seconds)
        if shard is None:
            return False
        if shard.batch_size is None:
            size = self.queue.fit_batch_size(shard.job_id, partial(fit_batch_size, self.engine))
            shard = replace(shard, batch_size=size)
        self._current = shard
        log.info(
            "claimed shard %s of %s (lines %d-%d)", shard.shard_index, shard.job_id, shard.next_line, shard.end_line
        )
        try:
            self.records.set_job_tensor_parallel(shard.job_id, self.engine.tensor_parallel_size)
            outcome = self.runner.run(shard)
        except ShutdownRequested:
            self.queue.release_shard(shard.shard_id, self.worker_id)
            log.info("released shard %s of %s for another worker", shard.shard_index, shard.job_id)
            return True
        except EngineFailed:
            self.queue.release_shard(shard.shard_id, self.worker_id, failed=True)
            raise
        except Exception:
            # Not the engine (storage refusing a write or a read, say): the shard goes back
            # after a pause, and the attempt does not count toward setting its batch aside.
            self._current = None  # the heartbeat must not renew the lease given back
            self._give_back(shard)
            raise
        finally:
            self._current = None
        all_closed = retry_transient(
            lambda: self.queue.finish_shard(shard, self.worker_id, stopped=outcome.stopped),
            what="finishing the shard",
            give_up_after_seconds=self.lease_seconds,
        )
        if all_closed:  # this worker closed the job's last shard: it joins the results now
            self._finalize(shard.job_id)
        return True

    def _give_back(self, shard: ClaimedShard) -> None:
        try:
            self.queue.release_shard(shard.shard_id, self.worker_id, retry_after=self.failure_pause_seconds)
        except Exception:  # Postgres away too: the lease runs out instead
            log.exception("could not release shard %s of %s", shard.shard_index, shard.job_id)

    def _finalize(self, job_id: str | None = None) -> str | None:
        """Finalizes one waiting job (or `job_id`); a failure leaves it to the next claimant."""
        try:
            return finalize_next(
                self.records,
                self.queue,
                self.store,
                self.worker_id,
                self.lease_seconds,
                self.max_batch_attempts,
                job_id,
                gpu_hour_price=self.gpu_hour_price,
            )
        except Exception:
            log.exception("finalization failed; it will be retried")
            return None

    def _idle(self) -> None:
        if self.waker is not None:
            self.waker.wait(self.poll_seconds, self.stop_requested)
        else:
            self.stop_requested.wait(self.poll_seconds)

    def run_forever(self) -> None:
        self.register()
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop_requested.is_set():
                try:
                    worked = self.run_once()
                except EngineFailed:
                    raise  # the process ends; its supervisor starts a fresh engine
                except Exception:
                    log.exception("shard failed; it will be retried after a pause")
                    worked = False
                if not worked:
                    self._idle()
        finally:
            self.stop_requested.set()
            if self.waker is not None:
                self.waker.close()
            try:
                self.records.set_worker_status(self.worker_id, "stopped")
            except Exception:
                log.warning("could not record this worker as stopped")
