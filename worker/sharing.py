"""The engine shared at static-batch grain: a worker holds several claimed shards at once,
and each time the engine has room the next static batch is chosen across them by priority,
then deadline (the job's `expires_at`, by the hour), then the owner with the fewest requests
in the engine, then claim order (within a shard, its own order).

Why: a shard run to its end holds the engine, so a small or urgent job waited for it (293 s
behind a 60,000-line job) and priority and fair share acted only between shards.

The worker claims its next shard when every held shard's last window has been taken (the
engine never drains between shards), and another job's shard that can share the engine when
work is announced (or every `poll_seconds`), up to `max_shards_held`. Each shard keeps its
exactly-once record: windows recorded in input order, at most `max_in_flight` static batches
unrecorded (a crash loses those alone), a cancel stopping it at a window boundary while the
rest runs on. A shard that needs the engine alone (strict; retrying a crash, one static
batch at a time) runs once the engine has drained.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

from app.core.backoff import retry_transient
from app.data.claims import ClaimedShard, deadline_hour
from app.data.models import JobStatus
from app.data.queue import JobQueue
from worker.engine import EngineFailed
from worker.overlap import OverlappedEngine, StaticBatchSource, WindowRun, window_result
from worker.shard_runner import STOPPING_STATUSES, ShardRunner

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARDS_HELD = 4  # Settings.max_shards_held
EMPTY_CLAIM_PAUSE_SECONDS = 1.0  # a claim that found nothing is not tried again sooner (but on a notification)
WRITE_WAIT_SECONDS = 0.05  # an idle engine looks again this often while only writes are pending

FAR = datetime.max


@dataclass
class HeldShard:
    """A claimed shard feeding the shared engine."""

    shard: ClaimedShard
    source: StaticBatchSource
    preparer: ThreadPoolExecutor
    order: int  # claims on this worker so far
    writes: collections.deque[Future[JobStatus]] = field(default_factory=collections.deque)
    windows: int = 0  # windows handed to the writer
    stopping: bool = False  # its job was cancelled or expired: nothing more enters
    left: bool = False  # stopped with lines it did not run

    @property
    def key(self) -> int:
        return self.shard.shard_id

    @property
    def deadline(self) -> datetime:
        expires = self.shard.expires_at
        return deadline_hour(expires).replace(tzinfo=None) if expires is not None else FAR

    @property
    def untaken(self) -> bool:
        return not self.stopping and not self.source.exhausted


class SharedEngine:
    """Runs every shard the worker holds through one OverlappedEngine (see the module)."""

    def __init__(
        self,
        runner: ShardRunner,
        queue: JobQueue,
        *,
        worker_id: str,
        lease_seconds: float,
        poll_seconds: float,
        stop_requested: threading.Event,
        holding: dict[int, ClaimedShard],
        prepare_claim: Callable[[ClaimedShard], ClaimedShard],
        run_alone: Callable[[ClaimedShard], None],
        closed: Callable[[str], object],
        background: Callable[[], object],
        notified: Callable[[], bool] = lambda: False,
        max_shards_held: int = DEFAULT_MAX_SHARDS_HELD,
        failure_pause_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.engine = runner.engine
        self.queue = queue
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.stop_requested = stop_requested
        self.holding = holding  # what the heartbeat renews: every shard held, by id
        self.prepare_claim = prepare_claim  # fits the batch size and records the engine's parallelism
        self.run_alone = run_alone  # runs a shard alone in the engine (strict, retrying)
        self.closed = closed  # the job's last shard was closed by this worker: finalize it
        self.background = background  # other jobs' finalizations, while this worker is busy
        self.notified = notified  # whether work was announced since last asked (never blocks)
        self.max_shards_held = max(1, max_shards_held)
        self.failure_pause_seconds = failure_pause_seconds  # a shard storage failed on waits this long
        self.clock = clock
        self.held: dict[int, HeldShard] = {}
        self.claims = 0
        self._alone: ClaimedShard | None = None  # claimed, waits for the engine to drain
        self._next_sharing_claim = 0.0
        self._next_pipeline_claim = 0.0
        self._next_background = 0.0

    # The loop.

    def serve(self, first: ClaimedShard) -> None:
        """Runs `first` and every shard claimed beside it until none is held; on a stop,
        hands every held shard back (static batches in flight are lost, recorded windows
        kept) and returns. EngineFailed gives them back as failed attempts and raises."""
        overlapped = OverlappedEngine(self.engine, self.runner.max_static_batches_in_flight)
        with ThreadPoolExecutor(1, "write") as writer, ThreadPoolExecutor(1, "finish") as finisher:
            self._writer, self._finisher, self.overlapped = writer, finisher, overlapped
            self._finishing: list[Future[object]] = []
            try:
                self._hold(first)
                self._loop()
            except EngineFailed:
                self._hand_back(failed=True)
                raise
            except BaseException:
                self._hand_back(failed=False)
                raise
            finally:
                for held in self.held.values():
                    held.preparer.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        overlapped = self.overlapped
        while self.held or self._alone is not None or not overlapped.idle:
            if self.stop_requested.is_set():
                self._hand_back(failed=False)
                return
            self._reap()
            self._claim_more()
            self._admit()
            if overlapped.idle:
                if self._alone is not None and not self._writes_pending():
                    self._run_alone_now()
                elif self.held or self._alone is not None:
                    self._wait_for_a_write()
                continue
            overlapped.step()
            self._record_completed()
            self._maybe_background()
        wait(self._finishing)

    # Claims.

    def _hold(self, shard: ClaimedShard) -> None:
        """Takes a claimed shard in; one that cannot even start (its batch size, its input's
        first read) goes back to the queue after a pause, and the others run on."""
        self.holding[shard.shard_id] = shard
        self.claims += 1
        preparer: ThreadPoolExecutor | None = None
        try:
            shard = self.prepare_claim(shard)
            self.holding[shard.shard_id] = shard
            if not self.runner.shares_the_engine(shard):
                log.info("claimed shard %s of %s to run alone once the engine drains", shard.shard_index, shard.job_id)
                self._alone = shard
                return
            preparer = ThreadPoolExecutor(1, f"prepare-{shard.shard_id}")
            source = StaticBatchSource(self.runner.windows_of(shard, preparer), shard.shard_id, shard.priority)
        except Exception:
            log.exception("shard %s of %s could not start; it goes back after a pause", shard.shard_index, shard.job_id)
            if preparer is not None:
                preparer.shutdown(wait=False, cancel_futures=True)
            self._give_back_now(shard, failed=False, retry_after=self.failure_pause_seconds)
            return
        self.held[shard.shard_id] = HeldShard(shard, source, preparer, self.claims)
        log.info(
            "claimed shard %s of %s (lines %d-%d), %d held",
            shard.shard_index,
            shard.job_id,
            shard.next_line,
            shard.end_line,
            len(self.held),
        )

    def _claim_more(self) -> None:
        """The pipeline's next shard when every held shard's last window was taken, or
        another job's when work was announced (or poll_seconds passed)."""
        if self._alone is not None or len(self.held) >= self.max_shards_held:
            return
        now = self.clock()
        if self.notified():
            self._next_sharing_claim = self._next_pipeline_claim = now
        pipeline = all(held.stopping or held.source.last_window_taken for held in self.held.values())
        if now < (self._next_pipeline_claim if pipeline else self._next_sharing_claim):
            return
        beside = [] if pipeline else sorted({held.shard.job_id for held in self.held.values()})
        try:
            shard = self.queue.claim_shard(
                self.worker_id, self.engine.model_name, self.lease_seconds, beside=beside, overlapped_only=bool(beside)
            )
        except Exception:  # Postgres away a moment: what runs goes on, the claim is tried again later
            log.warning("a claim failed; trying again in %.0f s", self.poll_seconds, exc_info=True)
            self._next_pipeline_claim = self._next_sharing_claim = now + self.poll_seconds
            return
        if shard is None:
            pause = EMPTY_CLAIM_PAUSE_SECONDS if pipeline else self.poll_seconds
            if pipeline:
                self._next_pipeline_claim = now + pause
            else:
                self._next_sharing_claim = now + pause
            return
        self._hold(shard)

    # Admission.

    def _rank(self, held: HeldShard, load: dict[str, int]) -> tuple[int, datetime, int, int]:
        return (-held.shard.priority, held.deadline, load.get(held.shard.owner, 0), held.order)

    def _admit(self) -> None:
        overlapped = self.overlapped
        while self._alone is None and overlapped.engine_has_room():
            candidates = [h for h in self.held.values() if h.untaken and overlapped.within_bound(h.key)]
            ready = [h for h in candidates if h.source.ready()]
            if not ready and overlapped.idle:
                ready = candidates  # nothing runs: wait for the preparer
            if not ready:
                return
            load: dict[str, int] = collections.Counter()
            for other in self.held.values():
                load[other.shard.owner] += overlapped.in_engine(other.key)
            held = min(ready, key=lambda h: self._rank(h, load))
            try:
                taken = held.source.take(overlapped.shared_blocks)
            except Exception as exc:  # its input could not be read or planned: the shard goes back
                self._give_up(held, exc)
                continue
            if taken is None:
                continue
            overlapped.admit(*taken)
            self._record_completed()  # a window with nothing for the engine

    def _record_completed(self) -> None:
        for run in self.overlapped.completed():
            held = self.held.get(run.key)  # type: ignore[call-overload]
            if held is None:
                continue
            self._record(held, run)

    def _record(self, held: HeldShard, run: WindowRun) -> None:
        generated = window_result(run, self.engine.kv_cache_tokens)
        write = self._writer.submit(self.runner.write_window, held.shard, run.window, generated, run.seconds)
        held.writes.append(write)
        held.windows += 1
        self.overlapped.recording(run, write)

    # Writes, stops, ends.

    def _writes_pending(self) -> bool:
        return any(held.writes for held in self.held.values())

    def _wait_for_a_write(self) -> None:
        pending = [write for held in self.held.values() for write in held.writes]
        if pending:
            wait(pending[:1], timeout=WRITE_WAIT_SECONDS)
        else:
            time.sleep(WRITE_WAIT_SECONDS)

    def _reap(self) -> None:
        """Takes the finished writes' news: a job that stopped, a shard that failed to
        record, a shard whose last window is recorded."""
        for held in list(self.held.values()):
            while held.writes and held.writes[0].done():
                write = held.writes.popleft()
                error = write.exception()
                if error is not None:
                    self._give_up(held, error)
                    break
                if write.result() in STOPPING_STATUSES and not held.stopping:
                    self._stop(held)
            else:
                if held.key in self.held and not held.writes and self._ended(held):
                    self._finish(held)

    def _ended(self, held: HeldShard) -> bool:
        in_engine = any(run.key == held.key for run in self.overlapped.windows)
        return (held.stopping or held.source.exhausted) and not in_engine

    def _stop(self, held: HeldShard) -> None:
        """Its job was cancelled or expired: its requests leave the engine, its lines not
        yet recorded are not run (the finalizer answers them)."""
        in_engine = any(run.key == held.key for run in self.overlapped.windows)
        self.overlapped.abort(held.key, everything=False)
        held.left = held.source.cancel() or in_engine
        held.stopping = True
        log.info("shard %s of %s stops: its batch is ending", held.shard.shard_index, held.shard.job_id)

    def _finish(self, held: HeldShard) -> None:
        del self.held[held.key]
        held.preparer.shutdown(wait=False)
        shard, stopped = held.shard, held.stopping and held.left

        def finish() -> object:
            try:
                all_closed = retry_transient(
                    lambda: self.queue.finish_shard(shard, self.worker_id, stopped=stopped),
                    what="finishing the shard",
                    give_up_after_seconds=self.lease_seconds,
                )
            finally:
                self.holding.pop(shard.shard_id, None)
            if all_closed:  # this worker closed the job's last shard: it joins the results now
                return self.closed(shard.job_id)
            return None

        self._finishing = [f for f in self._finishing if not f.done()]
        self._finishing.append(self._finisher.submit(finish))

    def _give_up(self, held: HeldShard, error: BaseException) -> None:
        """Storage or Postgres gave up on this shard (not the engine): its requests leave the
        engine and it goes back to the queue after a pause; the other shards run on."""
        log.error(
            "shard %s of %s failed; it will be retried after a pause",
            held.shard.shard_index,
            held.shard.job_id,
            exc_info=error,
        )
        del self.held[held.key]
        try:
            self.overlapped.abort(held.key, everything=False)
        finally:
            _quietly(held.source.cancel)
            wait(held.writes)
            held.preparer.shutdown(wait=False, cancel_futures=True)
            self._give_back_now(held.shard, failed=False, retry_after=self.failure_pause_seconds)

    def _hand_back(self, *, failed: bool) -> None:
        """Gives every held shard back (the worker stops, or its engine died): static
        batches in the engine are dropped, windows already handed to the writer are
        recorded first. With `failed`, the shards that had requests in the engine keep
        the attempt (one that keeps killing engines is eventually set aside)."""
        in_engine = {run.key for run in self.overlapped.windows if self.overlapped.in_engine(run.key) > 0}
        if not failed:
            _quietly(self.overlapped.abort)
        for held in self.held.values():
            _quietly(held.source.cancel)
        wait([write for held in self.held.values() for write in held.writes])
        shards = [(held.shard, failed and held.key in in_engine) for held in self.held.values()]
        if self._alone is not None:
            shards.append((self._alone, False))
        for shard, counted in shards:
            self._give_back_now(shard, failed=counted)
        for held in self.held.values():
            held.preparer.shutdown(wait=False, cancel_futures=True)
        self.held.clear()
        self._alone = None
        wait(self._finishing)

    def _give_back_now(self, shard: ClaimedShard, *, failed: bool, retry_after: float | None = None) -> None:
        self.holding.pop(shard.shard_id, None)
        try:
            self.queue.release_shard(shard.shard_id, self.worker_id, failed=failed, retry_after=retry_after)
            log.info("released shard %s of %s for another worker", shard.shard_index, shard.job_id)
        except Exception:  # Postgres away too: the lease runs out instead
            log.exception("could not release shard %s of %s", shard.shard_index, shard.job_id)

    def _run_alone_now(self) -> None:
        shard, self._alone = self._alone, None
        assert shard is not None
        self.run_alone(shard)

    def _maybe_background(self) -> None:
        """Other jobs' finalizations (a cancelled job with nothing running, one whose
        finalizer died) on the finishing thread, every poll_seconds, while this worker is busy."""
        now = self.clock()
        if now < self._next_background:
            return
        self._next_background = now + self.poll_seconds
        self._finishing = [f for f in self._finishing if not f.done()]
        if not self._finishing:
            self._finishing.append(self._finisher.submit(self.background))


def _quietly(step: Callable[[], object]) -> None:
    """A step of giving work back that must not stop the rest of it."""
    try:
        step()
    except Exception:
        log.exception("while giving shards back")
