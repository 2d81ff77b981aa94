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
from app.jobs.endpoints import endpoint_for
from app.jobs.finalize import finalize_next
from worker.engine import Engine, EngineFailed
from worker.shard_runner import DEFAULT_STATIC_BATCHES_IN_FLIGHT, ShardRunner, ShutdownRequested
from worker.sharing import DEFAULT_MAX_SHARDS_HELD, SharedEngine
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
        max_shards_held: int = DEFAULT_MAX_SHARDS_HELD,
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
        self.holding: dict[int, ClaimedShard] = {}  # every shard this worker holds a lease on, by id
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
        self.sharing = SharedEngine(
            self.runner,
            queue,
            worker_id=self.worker_id,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            stop_requested=self.stop_requested,
            holding=self.holding,
            prepare_claim=self.prepared,
            run_alone=self.run_alone,
            closed=self._finalize,
            background=self._finalize,
            notified=waker.pending if waker is not None else lambda: False,
            max_shards_held=max_shards_held,
            failure_pause_seconds=self.failure_pause_seconds,
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
            held = list(self.holding)
            try:
                for shard_id in held:
                    self.queue.renew_lease(shard_id, self.worker_id, self.lease_seconds)
                if not held:
                    self.records.set_worker_status(self.worker_id, "ready")
            except Exception:  # an outage must not kill the heartbeat; the next beat retries
                log.exception("heartbeat failed")

    def run_once(self) -> bool:
        """Finalizes a job that waits for it, or claims a shard and runs it: a shard whose
        engine call overlaps (generation's) shares the engine with every shard claimed beside
        it (worker.sharing) until none is held; any other shard runs alone, one at a time.
        False when there was nothing to do."""
        if self._finalize() is not None:
            return True
        shard = self.queue.claim_shard(self.worker_id, self.engine.model_name, self.lease_seconds)
        if shard is None:
            return False
        if endpoint_for(shard.endpoint).call.overlaps:
            self.sharing.serve(shard)
        else:
            self.run_alone(self.prepared(shard))
        return True

    def prepared(self, shard: ClaimedShard) -> ClaimedShard:
        """A claimed shard with its job's batch size (fitted to this engine by the job's
        first claimant) and the job's parallelism recorded."""
        self.holding[shard.shard_id] = shard
        if shard.batch_size is None:
            size = self.queue.fit_batch_size(shard.job_id, partial(fit_batch_size, self.engine))
            shard = replace(shard, batch_size=size)
        self.records.set_job_tensor_parallel(shard.job_id, self.engine.tensor_parallel_size)
        return shard

    def run_alone(self, shard: ClaimedShard) -> None:
        """Runs one shard alone in the engine to its end (or a stop)."""
        self.holding[shard.shard_id] = shard
        log.info(
            "running shard %s of %s alone (lines %d-%d)",
            shard.shard_index,
            shard.job_id,
            shard.next_line,
            shard.end_line,
        )
        try:
            outcome = self.runner.run(shard)
        except ShutdownRequested:
            self.queue.release_shard(shard.shard_id, self.worker_id)
            log.info("released shard %s of %s for another worker", shard.shard_index, shard.job_id)
            return
        except EngineFailed:
            self.queue.release_shard(shard.shard_id, self.worker_id, failed=True)
            raise
        except Exception:
            # Not the engine (storage refusing a write or a read, say): the shard goes back
            # after a pause, and the attempt does not count toward setting its batch aside.
            self.holding.pop(shard.shard_id, None)  # the heartbeat must not renew the lease given back
            self._give_back(shard)
            raise
        finally:
            self.holding.pop(shard.shard_id, None)
        all_closed = retry_transient(
            lambda: self.queue.finish_shard(shard, self.worker_id, stopped=outcome.stopped),
            what="finishing the shard",
            give_up_after_seconds=self.lease_seconds,
        )
        if all_closed:  # this worker closed the job's last shard: it joins the results now
            self._finalize(shard.job_id)

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
