"""The queue: every statement that moves a job or a shard through its states.

Create, claim (one statement, below), record a window's progress, renew and release
a lease, finish a shard, cancel, expire, complete. The worker and the API both go
through `JobQueue`; nothing else writes a job's status, its counters or a lease.
Each end of a job queues its webhook event (`app.data.outbox.record_event`) in the
transaction that ends it. Reads live in `app.data.records`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.database import Database
from app.core.errors import Conflict, NotFound
from app.data.claims import (
    CLAIM_FINALIZATION_OF_JOB_SQL,
    CLAIM_FINALIZATION_SQL,
    CLAIM_PLANNER_SQL,
    CLAIM_SHARD_SQL,
    FINALIZING_STATUSES,
    STOP_ABANDONED_SHARDS_SQL,
    WORK_CHANNEL,
    BatchSizeFit,
    ClaimedShard,
    Finalization,
    WindowResult,
    claim_parameters,
    deadline_hour,
)
from app.data.ids import now
from app.data.models import (
    FileRecord,
    Job,
    JobStatus,
    Shard,
    ShardStatus,
    Window,
    Worker,
)
from app.data.outbox import record_event
from app.data.records import visible_to

# Job rows are locked FOR NO KEY UPDATE: FOR UPDATE conflicts with the KEY SHARE lock each
# window's INSERT takes on its job (its foreign key), and deadlocked workers (bench/fleet.py).
JOB_ROW_LOCK = {"key_share": True}
FINALIZATION_LOCK_SECONDS = 5  # how long a claim of one named job waits for its row
LOCK_NOT_AVAILABLE = "55P03"  # Postgres: lock_timeout ran out


class JobQueue:
    """Every statement that moves a job or a shard through its states."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_job(self, job: Job, shard_size: int) -> Job:
        """Stores a batch and, when it is queued, its shards of consecutive lines (when it
        failed at creation, its `batch.failed` event)."""
        with self.db.session() as session:
            session.add(job)
            session.flush()  # the job's foreign key locks its input: a sweep deleting it ends first
            if session.scalar(select(FileRecord.deleted_at).where(FileRecord.id == job.input_file_id)) is not None:
                raise NotFound("file", job.input_file_id)  # expired and swept meanwhile (app.data.retention)
            if job.status == JobStatus.FAILED:
                record_event(session, job, job.failed_at or now())
            if job.status == JobStatus.QUEUED:
                for index, start in enumerate(range(0, job.request_total, shard_size)):
                    end = min(start + shard_size, job.request_total)
                    session.add(
                        Shard(
                            job_id=job.id,
                            index=index,
                            start_line=start,
                            end_line=end,
                            next_line=start,
                            priority=job.priority,
                            job_created_at=job.created_at,
                            deadline_at=deadline_hour(job.expires_at),
                            owner=job.owner,
                        )
                    )
                session.execute(text(f"NOTIFY {WORK_CHANNEL}"))  # wakes idle workers at commit
        return job

    def request_cancel(self, job_id: str, scope: str | None) -> Job:
        """Records the intent, nothing more: queued shards stop at once, running ones at
        their next window boundary, and whoever claims the job's finalization ends it."""
        with self.db.session() as session:
            job = session.get(Job, job_id, with_for_update=JOB_ROW_LOCK)
            if job is None or not visible_to(scope, job.owner):
                raise NotFound("batch", job_id)
            status = JobStatus(job.status)
            if status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
                return job
            if status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
                raise Conflict(f"Cannot cancel a batch that is {status.value}.")
            job.status = JobStatus.CANCELLING
            job.cancelling_at = now()
            self._stop_waiting_shards(session, job.id)
            return job

    def expire_due(self) -> list[str]:
        """Moves jobs past their expires_at to `expiring` (they end at their next window
        boundary, or at once when nothing runs); returns their ids."""
        with self.db.session() as session:
            due = list(
                session.scalars(
                    select(Job)
                    .where(Job.status.in_([JobStatus.QUEUED, JobStatus.IN_PROGRESS]), Job.expires_at < func.now())
                    .with_for_update(skip_locked=True, key_share=True)
                )
            )
            for job in due:
                job.status = JobStatus.EXPIRING
                self._stop_waiting_shards(session, job.id)
            return [job.id for job in due]

    @staticmethod
    def _stop_waiting_shards(session: Session, job_id: str) -> None:
        """Stops the job's waiting shards that nobody is claiming at this instant (SKIP LOCKED:
        a claim holds its shard, then waits on the job row this caller holds; waiting on the
        shard here would deadlock). One claimed meanwhile stops at its first window."""
        waiting = (
            select(Shard.id)
            .where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        session.execute(update(Shard).where(Shard.id.in_(waiting)).values(status=ShardStatus.STOPPED))
        session.execute(text(f"NOTIFY {WORK_CHANNEL}"))  # an idle worker may finalize it now

    # Finalization: leased like shards.

    def claim_finalization(
        self, finalizer_id: str, lease_seconds: float, job_id: str | None = None
    ) -> Finalization | None:
        """The next job whose shards are all closed and that waits to be joined or ended
        (`job_id`: only that one), with a lease on it. A running shard of a cancelled or
        expired job whose worker died is stopped first, committed on its own (the claim never
        waits on a job's row holding shard rows); one job's claim waits for its row a while."""
        with self.db.engine.begin() as conn:
            conn.execute(STOP_ABANDONED_SHARDS_SQL)
        params = {"finalizer_id": finalizer_id, "lease_seconds": lease_seconds, "job_id": job_id}
        try:
            with self.db.engine.begin() as conn:
                if job_id is None:
                    row = conn.execute(CLAIM_FINALIZATION_SQL, params).one_or_none()
                else:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{FINALIZATION_LOCK_SECONDS}s'"))
                    row = conn.execute(CLAIM_FINALIZATION_OF_JOB_SQL, params).one_or_none()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            return None  # its row stayed busy: the next sweep (SKIP LOCKED) takes it
        return Finalization(job_id=row.id, attempts=row.finalize_attempts) if row is not None else None

    def renew_finalization(self, job_id: str, finalizer_id: str, lease_seconds: float) -> bool:
        with self.db.session() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.finalizer_id == finalizer_id, Job.status.in_(FINALIZING_STATUSES))
                .values(finalize_lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
                .returning(Job.id)
            ).first()
            return renewed is not None

    def release_finalization(self, job_id: str, finalizer_id: str, *, retry_after: float, counted: bool) -> None:
        """Gives the job back after a failed attempt, to be tried again in `retry_after`
        seconds. An outage (not `counted`) does not count toward the attempts."""
        with self.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.finalizer_id == finalizer_id, Job.status.in_(FINALIZING_STATUSES))
                .values(
                    finalize_lease_expires_at=func.now() + timedelta(seconds=retry_after),
                    finalize_attempts=Job.finalize_attempts if counted else Job.finalize_attempts - 1,
                )
            )

    def fail_finalization(self, job_id: str, finalizer_id: str, message: str) -> None:
        """Ends a job whose finalization keeps failing as `failed`, with the reason."""
        with self.db.session() as session:
            job = self._held(session, job_id, finalizer_id)
            job.status = JobStatus.FAILED
            job.failed_at = now()
            job.errors = [*(job.errors or []), {"code": "finalization_failed", "message": message, "param": None}]
            job.finalize_lease_expires_at = None
            record_event(session, job, job.failed_at)

    # The worker's side.

    def claim_shard(self, worker_id: str, model: str, lease_seconds: float, **beside: Any) -> ClaimedShard | None:
        """The next shard in claim order, leased to `worker_id`; `beside` (app.data.claims.claim_parameters)
        asks for another job's than the worker holds, one that can share its engine."""
        params = claim_parameters(worker_id, model, lease_seconds, **beside)
        with self.db.engine.begin() as conn:  # a plain connection, not an ORM session: the hot path
            conn.execute(CLAIM_PLANNER_SQL)
            row = conn.execute(CLAIM_SHARD_SQL, params).one_or_none()
            return ClaimedShard.from_row(row._asdict()) if row is not None else None

    def fit_batch_size(self, job_id: str, fit: BatchSizeFit) -> int:
        """The job's batch size; when it has none yet, `fit(its estimate)` sets it, with its
        basis, under the job's row lock: every shard of a job runs the first claimant's size."""
        with self.db.session() as session:
            job = session.execute(select(Job).where(Job.id == job_id).with_for_update(key_share=True)).scalar_one()
            if job.batch_size is None:
                job.batch_size, job.batch_size_basis = fit(job.estimate)
            return job.batch_size

    def record_window(
        self, shard: ClaimedShard, seq: int, worker_id: str, result: WindowResult, lease_seconds: float
    ) -> JobStatus:
        """One transaction: the batch's statistics, the shard's progress and lease, the
        batch totals. Returns the batch's status so the worker can stop on cancel."""
        tps = result.completion_tokens / result.generate_seconds if result.generate_seconds > 0 else 0.0
        with self.db.session() as session:
            moved = session.execute(
                update(Shard)
                .where(
                    Shard.id == shard.shard_id,
                    Shard.worker_id == worker_id,
                    Shard.status == ShardStatus.RUNNING,
                    Shard.next_line == result.first_line,
                )
                .values(
                    next_line=result.next_line,
                    windows_done=seq + 1,
                    attempts=1,  # progress: this claim works
                    lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
                )
                .returning(Shard.id)
            ).first()
            if moved is None:
                if self._already_recorded(session, shard.shard_id, worker_id, result.next_line):
                    return JobStatus(session.get_one(Job, shard.job_id).status)  # a retried commit
                raise LeaseLost(shard.shard_id)
            session.add(
                Window(
                    job_id=shard.job_id,
                    shard_index=shard.shard_index,
                    seq=seq,
                    first_line=result.first_line,
                    prompts=result.prompts,
                    completed=result.completed,
                    failed=result.failed,
                    prompt_tokens=result.prompt_tokens,
                    cached_tokens=result.cached_tokens,
                    completion_tokens=result.completion_tokens,
                    generate_seconds=result.generate_seconds,
                    accelerator_seconds=result.accelerator_seconds,
                    tokens_per_second=tps,
                    output_lengths=result.output_lengths,
                    error_lines=result.error_lines,
                    static_batches=result.static_batches,
                    engine_stats=result.engine_stats,
                    worker_id=worker_id,
                )
            )
            status = session.execute(
                update(Job)
                .where(Job.id == shard.job_id)
                .values(
                    request_completed=Job.request_completed + result.completed,
                    request_failed=Job.request_failed + result.failed,
                    prompt_tokens=Job.prompt_tokens + result.prompt_tokens,
                    cached_tokens=Job.cached_tokens + result.cached_tokens,
                    completion_tokens=Job.completion_tokens + result.completion_tokens,
                    generate_seconds=Job.generate_seconds + result.generate_seconds,
                    accelerator_seconds=Job.accelerator_seconds + result.accelerator_seconds,
                    first_window_at=func.coalesce(Job.first_window_at, func.now()),
                )
                .returning(Job.status)
            ).scalar_one()
            return JobStatus(status)

    @staticmethod
    def _already_recorded(session: Session, shard_id: int, worker_id: str, next_line: int) -> bool:
        """True when this worker's earlier try of the same commit went through (the
        connection dropped before the answer came back)."""
        shard = session.get(Shard, shard_id)
        return shard is not None and shard.worker_id == worker_id and shard.next_line == next_line

    def renew_lease(self, shard_id: int, worker_id: str, lease_seconds: float) -> bool:
        with self.db.session() as session:
            renewed = session.execute(
                update(Shard)
                .where(Shard.id == shard_id, Shard.worker_id == worker_id, Shard.status == ShardStatus.RUNNING)
                .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
                .returning(Shard.id)
            ).first()
            session.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=func.now()))
            return renewed is not None

    def release_shard(
        self, shard_id: int, worker_id: str, *, failed: bool = False, retry_after: float | None = None
    ) -> None:
        """Gives a shard back unfinished; another worker resumes it. A graceful stop
        forgets the attempt; a failure (`failed`) keeps it, so a batch that keeps
        killing engines is eventually set aside. With `retry_after`, the shard is held
        that many seconds more before any worker (this one too) may claim it again: a
        failure that may not pass at once (storage refusing a write, say) is retried
        after a pause rather than on every poll."""
        with self.db.session() as session:
            attempts = Shard.attempts if failed else Shard.attempts - 1
            mine = update(Shard).where(
                Shard.id == shard_id, Shard.worker_id == worker_id, Shard.status == ShardStatus.RUNNING
            )
            if retry_after is None:
                session.execute(
                    mine.values(status=ShardStatus.QUEUED, worker_id=None, lease_expires_at=None, attempts=attempts)
                )
                session.execute(text(f"NOTIFY {WORK_CHANNEL}"))
            else:  # the lease runs out in `retry_after`; the claim then takes it as a stale shard
                expires = func.now() + timedelta(seconds=retry_after)
                session.execute(mine.values(lease_expires_at=expires, attempts=attempts))
            session.execute(update(Worker).where(Worker.id == worker_id).values(current_shard_id=None))

    def finish_shard(self, shard: ClaimedShard, worker_id: str, stopped: bool) -> bool:
        """Marks the shard done (or stopped); when no shard of its job is left open, the job
        waits for finalization (claimed with `claim_finalization`). Safe to retry: a
        second call finds the shard already closed. Returns whether the job's shards are
        all closed."""
        with self.db.session() as session:
            # Lock the job so two workers closing its last shards agree on "no shard left".
            job = session.get(Job, shard.job_id, with_for_update=JOB_ROW_LOCK)
            assert job is not None
            session.execute(
                update(Shard)
                .where(Shard.id == shard.shard_id, Shard.worker_id == worker_id, Shard.status == ShardStatus.RUNNING)
                .values(status=ShardStatus.STOPPED if stopped else ShardStatus.DONE, lease_expires_at=None)
            )
            session.execute(update(Worker).where(Worker.id == worker_id).values(current_shard_id=None))
            open_shards = session.scalar(
                select(func.count())
                .select_from(Shard)
                .where(Shard.job_id == shard.job_id, Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]))
            )
            if open_shards:
                return False
            if job.status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
                job.status = JobStatus.FINALIZING
                job.finalizing_at = now()
            return True

    def complete_job(
        self, job_id: str, finalizer_id: str, output: FileRecord, errors: FileRecord | None, unrun_lines: int
    ) -> None:
        """Stores the joined output files and ends the job (completed, cancelled or expired),
        if `finalizer_id` still holds its finalization (else FinalizationLost). The output
        file exists even when empty; the error file only when a line failed. The job's
        webhook event is queued in the same transaction."""
        with self.db.session() as session:
            job = self._held(session, job_id, finalizer_id)
            session.add_all([output] + ([errors] if errors else []))
            session.flush()
            job.output_file_id = output.id
            job.error_file_id = errors.id if errors else None
            job.request_failed += unrun_lines
            job.finalize_lease_expires_at = None
            ended = now()
            if job.status == JobStatus.CANCELLING:
                job.status = JobStatus.CANCELLED
                job.cancelled_at = ended
            elif job.status == JobStatus.EXPIRING:
                job.status = JobStatus.EXPIRED
                job.expired_at = ended
            else:
                job.status = JobStatus.COMPLETED
                job.completed_at = ended
            record_event(session, job, ended)

    @staticmethod
    def _held(session: Session, job_id: str, finalizer_id: str) -> Job:
        """The job, locked, if this finalizer still holds it."""
        job = session.get(Job, job_id, with_for_update=JOB_ROW_LOCK)
        if job is None or job.finalizer_id != finalizer_id or job.status not in FINALIZING_STATUSES:
            raise FinalizationLost(job_id)
        return job


class LeaseLost(RuntimeError):
    """The shard was taken over by another worker (this one's lease ran out)."""

    def __init__(self, shard_id: int) -> None:
        super().__init__(f"lease on shard {shard_id} was lost")
        self.shard_id = shard_id


class FinalizationLost(RuntimeError):
    """Another process took the job's finalization over (this one's lease ran out)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"finalization of {job_id} was taken over")
        self.job_id = job_id
