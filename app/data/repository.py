"""Every SQL statement of the job lifecycle: create, claim, heartbeat, progress, finish.

The worker and the API both go through `JobRepository`; nothing else writes a
batch's status, its counters or a shard's lease.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, aliased

from app.core.database import Database
from app.core.errors import Conflict, NotFound
from app.data.models import (
    TERMINAL_STATUSES,
    ApiKey,
    Batch,
    BatchRun,
    BatchStatus,
    FileRecord,
    Shard,
    ShardStatus,
    Worker,
)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ClaimedShard:
    shard_id: int
    batch_id: str
    shard_index: int
    next_line: int
    end_line: int
    batches_done: int
    attempts: int  # claims since the shard last made progress
    input_key: str
    endpoint: str
    batch_size: int
    sampling_defaults: dict[str, Any]
    model: str


@dataclass(frozen=True)
class BatchResult:
    """What one static batch did, recorded in the same transaction as its progress."""

    first_line: int
    next_line: int
    prompts: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    generate_seconds: float
    output_lengths: list[int] | None = None  # histogram over app.jobs.stats.OUTPUT_LENGTH_EDGES
    error_lines: list[int] | None = None  # offsets from first_line of the lines in the error part
    engine_stats: dict[str, Any] | None = None  # app.jobs.telemetry


WORK_CHANNEL = "llm_batch_work"  # LISTEN/NOTIFY channel: new shards to claim

# The claim, in one round trip.
CLAIM_SHARD_SQL = text(
    """
    WITH stale AS (
        -- First, a shard whose worker's lease ran out (it died or lost its machine):
        -- resuming it lets its batch finish. ix_shards_running_lease holds one row per
        -- busy worker, so this is cheap.
        SELECT s.id
        FROM shards s
        JOIN batches b ON b.id = s.batch_id
        WHERE s.status = 'running' AND s.lease_expires_at < now()
          AND b.status IN ('queued', 'in_progress') AND b.expires_at > now() AND b.model = :model
        ORDER BY s.lease_expires_at
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    ),
    waiting AS (
        -- Else the first waiting shard of the highest-priority, oldest runnable batch for
        -- this model. The order is ix_shards_claim_order's, so the scan stops at the first
        -- shard it may take instead of sorting the queue. SKIP LOCKED lets many workers
        -- claim at once without waiting on each other.
        SELECT s.id
        FROM shards s
        JOIN batches b ON b.id = s.batch_id
        WHERE s.status = 'queued'
          AND b.status IN ('queued', 'in_progress') AND b.expires_at > now() AND b.model = :model
        ORDER BY s.priority DESC, s.batch_created_at, s.batch_id, s.index
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    ),
    candidate AS (
        -- `waiting` is only read (and its row only locked) when `stale` is empty.
        SELECT id FROM stale UNION ALL SELECT id FROM waiting LIMIT 1
    ),
    claimed AS (
        -- Take the lease.
        UPDATE shards s
        SET status = 'running', worker_id = :worker_id, attempts = s.attempts + 1,
            lease_expires_at = now() + make_interval(secs => :lease_seconds)
        FROM candidate
        WHERE s.id = candidate.id
        RETURNING s.*
    ),
    started AS (
        -- The first claim moves the batch to in_progress.
        UPDATE batches b
        SET status = 'in_progress', in_progress_at = coalesce(b.in_progress_at, now())
        FROM claimed
        WHERE b.id = claimed.batch_id AND b.status = 'queued'
        RETURNING b.id
    ),
    busy AS (
        -- The worker shows what it holds.
        UPDATE workers w SET current_shard_id = claimed.id FROM claimed WHERE w.id = :worker_id RETURNING w.id
    )
    SELECT claimed.id AS shard_id, claimed.batch_id, claimed.index AS shard_index, claimed.next_line,
           claimed.end_line, claimed.batches_done, claimed.attempts, f.storage_key AS input_key, b.endpoint,
           b.batch_size, b.sampling_defaults, b.model
    FROM claimed
    JOIN batches b ON b.id = claimed.batch_id
    JOIN files f ON f.id = b.input_file_id
    """
)


def _visible_to(scope: str | None, owner: str) -> bool:
    """Whether a caller scoped to `scope` (None: admins and workers) may see `owner`'s object."""
    return scope is None or owner == scope


def _older_than(table: type[Batch] | type[FileRecord], anchor: Batch | FileRecord) -> ColumnElement[bool]:
    """Rows after `anchor` in newest-first order (created_at, then id): the keyset cursor."""
    return (table.created_at < anchor.created_at) | ((table.created_at == anchor.created_at) & (table.id < anchor.id))


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Files.

    def add_file(self, record: FileRecord) -> FileRecord:
        with self.db.session() as session:
            session.add(record)
        return record

    def get_file(self, file_id: str, scope: str | None = None) -> FileRecord:
        """A live file; `scope` is the caller's owner (None for admins and the worker).
        Another owner's file is "not found", never forbidden, so ids leak nothing."""
        with self.db.session() as session:
            record = session.get(FileRecord, file_id)
            if record is None or record.deleted_at is not None or not _visible_to(scope, record.owner):
                raise NotFound("file", file_id)
            return record

    def list_files(self, scope: str | None, purpose: str | None, limit: int, after: str | None) -> list[FileRecord]:
        """Newest first; `after` is the last id of the previous page."""
        with self.db.session() as session:
            query = select(FileRecord).where(FileRecord.deleted_at.is_(None))
            if scope is not None:
                query = query.where(FileRecord.owner == scope)
            if purpose is not None:
                query = query.where(FileRecord.purpose == purpose)
            if after is not None:
                query = query.where(_older_than(FileRecord, self.get_file(after, scope)))
            query = query.order_by(FileRecord.created_at.desc(), FileRecord.id.desc()).limit(limit)
            return list(session.scalars(query))

    def delete_file(self, file_id: str, scope: str | None) -> FileRecord:
        """Marks a file deleted (the caller removes its object); refused while a batch
        that reads it is still running."""
        with self.db.session() as session:
            record = session.get(FileRecord, file_id, with_for_update=True)
            if record is None or record.deleted_at is not None or not _visible_to(scope, record.owner):
                raise NotFound("file", file_id)
            running = session.scalar(
                select(func.count())
                .select_from(Batch)
                .where(Batch.input_file_id == file_id, Batch.status.not_in([s.value for s in TERMINAL_STATUSES]))
            )
            if running:
                raise Conflict(f"File {file_id} is the input of a batch that has not ended.", param="file_id")
            record.deleted_at = now()
            return record

    # Batches.

    def create_batch(self, batch: Batch, shard_size: int) -> Batch:
        """Stores a batch and, when it is queued, its shards of consecutive lines."""
        with self.db.session() as session:
            session.add(batch)
            session.flush()
            if batch.status == BatchStatus.QUEUED:
                for index, start in enumerate(range(0, batch.request_total, shard_size)):
                    end = min(start + shard_size, batch.request_total)
                    session.add(
                        Shard(
                            batch_id=batch.id,
                            index=index,
                            start_line=start,
                            end_line=end,
                            next_line=start,
                            priority=batch.priority,
                            batch_created_at=batch.created_at,
                        )
                    )
                session.execute(text(f"NOTIFY {WORK_CHANNEL}"))  # wakes idle workers at commit
        return batch

    def get_batch(self, batch_id: str, scope: str | None = None) -> Batch:
        with self.db.session() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or not _visible_to(scope, batch.owner):
                raise NotFound("batch", batch_id)
            return batch

    def list_batches(self, scope: str | None, limit: int, after: str | None = None) -> list[Batch]:
        """Newest first; `after` is the id of the last batch of the previous page."""
        with self.db.session() as session:
            query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
            if scope is not None:
                query = query.where(Batch.owner == scope)
            if after is not None:
                query = query.where(_older_than(Batch, self.get_batch(after, scope)))
            return list(session.scalars(query))

    def batch_view(self, batch_id: str, scope: str | None = None) -> tuple[Batch, int, list[str]]:
        """A batch with how many workers ran it and its retries' ids, in one query: what
        a poll of `GET /v1/batches/{id}` needs."""
        child = aliased(Batch)
        workers = (
            select(func.count(BatchRun.worker_id.distinct())).where(BatchRun.batch_id == Batch.id).scalar_subquery()
        )
        children = (
            select(func.array_agg(aggregate_order_by(child.id, child.created_at, child.id)))
            .where(child.parent_batch_id == Batch.id)
            .scalar_subquery()
        )
        with self.db.session() as session:
            row = session.execute(select(Batch, workers, children).where(Batch.id == batch_id)).one_or_none()
            if row is None or not _visible_to(scope, row[0].owner):
                raise NotFound("batch", batch_id)
            return row[0], int(row[1] or 0), list(row[2] or [])

    def descendants(self, batch_id: str) -> list[Batch]:
        """Retries of the batch, of its retries, and so on, oldest first."""
        with self.db.session() as session:
            tree = select(Batch.id).where(Batch.parent_batch_id == batch_id).cte("tree", recursive=True)
            tree = tree.union_all(select(Batch.id).join(tree, Batch.parent_batch_id == tree.c.id))
            return list(
                session.scalars(select(Batch).join(tree, Batch.id == tree.c.id).order_by(Batch.created_at, Batch.id))
            )

    def request_cancel(self, batch_id: str, scope: str | None) -> tuple[Batch, bool]:
        """Queued work stops at once, running shards at their next batch boundary.
        Returns the batch and whether the caller must finalize it now (no shard runs)."""
        with self.db.session() as session:
            batch = session.get(Batch, batch_id, with_for_update=True)
            if batch is None or not _visible_to(scope, batch.owner):
                raise NotFound("batch", batch_id)
            status = BatchStatus(batch.status)
            if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                return batch, False
            if status not in (BatchStatus.QUEUED, BatchStatus.IN_PROGRESS):
                raise Conflict(f"Cannot cancel a batch that is {status.value}.")
            batch.status = BatchStatus.CANCELLING
            batch.cancelling_at = now()
            return batch, self._stop_shards(session, batch)

    def expire_due(self) -> list[str]:
        """Moves batches past their expires_at to `expiring`; returns those the caller
        must finalize now (no shard is running)."""
        to_finalize = []
        with self.db.session() as session:
            due = session.scalars(
                select(Batch)
                .where(Batch.status.in_([BatchStatus.QUEUED, BatchStatus.IN_PROGRESS]), Batch.expires_at < func.now())
                .with_for_update(skip_locked=True)
            )
            for batch in due:
                batch.status = BatchStatus.EXPIRING
                if self._stop_shards(session, batch):
                    to_finalize.append(batch.id)
        return to_finalize

    @staticmethod
    def _stop_shards(session: Session, batch: Batch) -> bool:
        """Stops the shards nobody holds; True when none runs, so finalization is due now
        (and this caller owns it: finalizing_at marks the one finalizer)."""
        session.execute(
            update(Shard)
            .where(Shard.batch_id == batch.id, Shard.status == ShardStatus.QUEUED)
            .values(status=ShardStatus.STOPPED)
        )
        running = session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.batch_id == batch.id, Shard.status == ShardStatus.RUNNING)
        )
        if running or batch.finalizing_at is not None:
            return False
        batch.finalizing_at = now()
        return True

    # The worker's side.

    def claim_shard(self, worker_id: str, model: str, lease_seconds: float) -> ClaimedShard | None:
        # A plain connection, not an ORM session: the claim is the hot path of a busy queue.
        with self.db.engine.begin() as conn:
            # Walk ix_shards_claim_order even when the planner's statistics are stale (a
            # burst of new jobs): sorting the whole queue costs ~30 ms at 10,000 jobs.
            conn.execute(text("SET LOCAL enable_sort = off"))
            row = conn.execute(
                CLAIM_SHARD_SQL, {"worker_id": worker_id, "model": model, "lease_seconds": lease_seconds}
            ).one_or_none()
            return ClaimedShard(**row._asdict()) if row is not None else None

    def record_batch(
        self, shard: ClaimedShard, seq: int, worker_id: str, result: BatchResult, lease_seconds: float
    ) -> BatchStatus:
        """One transaction: the batch's statistics, the shard's progress and lease, the
        batch totals. Returns the batch's status so the worker can stop on cancel."""
        tps = result.completion_tokens / result.generate_seconds if result.generate_seconds > 0 else 0.0
        with self.db.session() as session:
            moved = session.execute(
                update(Shard)
                .where(Shard.id == shard.shard_id, Shard.worker_id == worker_id, Shard.next_line == result.first_line)
                .values(
                    next_line=result.next_line,
                    batches_done=seq + 1,
                    attempts=1,  # progress: this claim works
                    lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
                )
                .returning(Shard.id)
            ).first()
            if moved is None:
                if self._already_recorded(session, shard.shard_id, worker_id, result.next_line):
                    return BatchStatus(session.get_one(Batch, shard.batch_id).status)  # a retried commit
                raise LeaseLost(shard.shard_id)
            session.add(
                BatchRun(
                    batch_id=shard.batch_id,
                    shard_index=shard.shard_index,
                    seq=seq,
                    first_line=result.first_line,
                    prompts=result.prompts,
                    completed=result.completed,
                    failed=result.failed,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    generate_seconds=result.generate_seconds,
                    tokens_per_second=tps,
                    output_lengths=result.output_lengths,
                    error_lines=result.error_lines,
                    engine_stats=result.engine_stats,
                    worker_id=worker_id,
                )
            )
            status = session.execute(
                update(Batch)
                .where(Batch.id == shard.batch_id)
                .values(
                    request_completed=Batch.request_completed + result.completed,
                    request_failed=Batch.request_failed + result.failed,
                    prompt_tokens=Batch.prompt_tokens + result.prompt_tokens,
                    completion_tokens=Batch.completion_tokens + result.completion_tokens,
                    generate_seconds=Batch.generate_seconds + result.generate_seconds,
                    first_batch_at=func.coalesce(Batch.first_batch_at, func.now()),
                )
                .returning(Batch.status)
            ).scalar_one()
            return BatchStatus(status)

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

    def release_shard(self, shard_id: int, worker_id: str, *, failed: bool = False) -> None:
        """Gives a shard back unfinished; another worker resumes it. A graceful stop
        forgets the attempt; a failure (`failed`) keeps it, so a batch that keeps
        killing engines is eventually set aside."""
        with self.db.session() as session:
            session.execute(
                update(Shard)
                .where(Shard.id == shard_id, Shard.worker_id == worker_id, Shard.status == ShardStatus.RUNNING)
                .values(
                    status=ShardStatus.QUEUED,
                    worker_id=None,
                    lease_expires_at=None,
                    attempts=Shard.attempts if failed else Shard.attempts - 1,
                )
            )
            session.execute(text(f"NOTIFY {WORK_CHANNEL}"))
            session.execute(update(Worker).where(Worker.id == worker_id).values(current_shard_id=None))

    def finish_shard(self, shard: ClaimedShard, worker_id: str, stopped: bool) -> bool:
        """Marks the shard done (or stopped); True when this was the batch's last open
        shard, so the caller must finalize the batch."""
        with self.db.session() as session:
            # Lock the batch so exactly one worker sees "no shard left".
            batch = session.get(Batch, shard.batch_id, with_for_update=True)
            assert batch is not None
            session.execute(
                update(Shard)
                .where(Shard.id == shard.shard_id, Shard.worker_id == worker_id)
                .values(status=ShardStatus.STOPPED if stopped else ShardStatus.DONE, lease_expires_at=None)
            )
            session.execute(update(Worker).where(Worker.id == worker_id).values(current_shard_id=None))
            open_shards = session.scalar(
                select(func.count())
                .select_from(Shard)
                .where(Shard.batch_id == shard.batch_id, Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]))
            )
            if open_shards or batch.finalizing_at is not None or BatchStatus(batch.status) in TERMINAL_STATUSES:
                return False
            if batch.status not in (BatchStatus.CANCELLING, BatchStatus.EXPIRING):
                batch.status = BatchStatus.FINALIZING
            batch.finalizing_at = now()
            return True

    def batch_runs(self, batch_id: str) -> list[BatchRun]:
        """The recorded static batches in input order."""
        with self.db.session() as session:
            return list(
                session.scalars(select(BatchRun).where(BatchRun.batch_id == batch_id).order_by(BatchRun.first_line))
            )

    def measured_rate(self, model: str, batch_size: int, days: float) -> tuple[float, int] | None:
        """Generated tokens per generate-second of recent static batches of jobs on `model`
        at `batch_size`, and how many static batches that is; None without any."""
        with self.db.session() as session:
            tokens, seconds, count = session.execute(
                select(func.sum(BatchRun.completion_tokens), func.sum(BatchRun.generate_seconds), func.count())
                .join(Batch, Batch.id == BatchRun.batch_id)
                .where(
                    Batch.model == model,
                    Batch.batch_size == batch_size,
                    BatchRun.prompts > 0,
                    BatchRun.created_at > func.now() - timedelta(days=days),
                )
            ).one()
        return (float(tokens) / float(seconds), int(count)) if seconds else None

    def set_estimate(self, batch_id: str, estimate: dict[str, Any]) -> None:
        with self.db.session() as session:
            session.execute(update(Batch).where(Batch.id == batch_id).values(estimate=estimate))

    def worker_count(self, batch_id: str) -> int:
        """How many workers ran static batches of this batch."""
        with self.db.session() as session:
            return int(
                session.scalar(select(func.count(BatchRun.worker_id.distinct())).where(BatchRun.batch_id == batch_id))
                or 0
            )

    def shards(self, batch_id: str) -> list[Shard]:
        with self.db.session() as session:
            return list(session.scalars(select(Shard).where(Shard.batch_id == batch_id).order_by(Shard.index)))

    def complete_batch(self, batch_id: str, output: FileRecord, errors: FileRecord | None, unrun_lines: int) -> None:
        """Stores the joined output files and ends the batch (completed, or cancelled).
        The output file exists even when empty; the error file only when a line failed."""
        with self.db.session() as session:
            session.add_all([output] + ([errors] if errors else []))
            session.flush()
            batch = session.get(Batch, batch_id, with_for_update=True)
            assert batch is not None
            batch.output_file_id = output.id
            batch.error_file_id = errors.id if errors else None
            batch.request_failed += unrun_lines
            if batch.status == BatchStatus.CANCELLING:
                batch.status = BatchStatus.CANCELLED
                batch.cancelled_at = now()
            elif batch.status == BatchStatus.EXPIRING:
                batch.status = BatchStatus.EXPIRED
                batch.expired_at = now()
            else:
                batch.status = BatchStatus.COMPLETED
                batch.completed_at = now()

    # API keys.

    def add_key(self, key: ApiKey) -> ApiKey:
        with self.db.session() as session:
            session.add(key)
        return key

    def revoke_key(self, key_id_or_prefix: str) -> int:
        with self.db.session() as session:
            return len(
                session.execute(
                    update(ApiKey)
                    .where(
                        (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix),
                        ApiKey.revoked_at.is_(None),
                    )
                    .values(revoked_at=func.now())
                    .returning(ApiKey.id)
                ).all()
            )

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self.db.session() as session:
            return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))

    def key_by_id(self, key_id: str) -> ApiKey | None:
        with self.db.session() as session:
            return session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))

    def has_admin_key(self) -> bool:
        with self.db.session() as session:
            found = session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.is_admin, ApiKey.revoked_at.is_(None))
            )
            return bool(found)

    # Metrics and the dashboard.

    def metrics_snapshot(self, batch_seconds_buckets: list[float]) -> MetricsSnapshot:
        """Everything /metrics reports, read in one transaction."""
        with self.db.session() as session:
            statuses = dict(session.execute(select(Batch.status, func.count()).group_by(Batch.status)).all())
            queued_lines = session.scalar(
                select(func.coalesce(func.sum(Shard.end_line - Shard.next_line), 0)).where(
                    Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING])
                )
            )
            per_worker = session.execute(
                select(
                    BatchRun.worker_id,
                    func.count(),
                    func.sum(BatchRun.prompt_tokens),
                    func.sum(BatchRun.completion_tokens),
                    func.sum(BatchRun.generate_seconds),
                    *[func.count().filter(BatchRun.generate_seconds <= edge) for edge in batch_seconds_buckets],
                ).group_by(BatchRun.worker_id)
            ).all()
            workers = list(session.scalars(select(Worker)))
        return MetricsSnapshot(
            batches_by_status={str(k): int(v) for k, v in statuses.items()},
            queued_lines=int(queued_lines or 0),
            per_worker=[
                WorkerTotals(
                    worker_id=row[0],
                    batches=int(row[1]),
                    prompt_tokens=int(row[2] or 0),
                    completion_tokens=int(row[3] or 0),
                    generate_seconds=float(row[4] or 0),
                    seconds_at_or_below=[int(c) for c in row[5:]],
                )
                for row in per_worker
            ],
            workers=workers,
        )

    def shard_by_id(self, shard_id: int | None) -> Shard | None:
        if shard_id is None:
            return None
        with self.db.session() as session:
            return session.get(Shard, shard_id)

    def list_workers(self) -> list[Worker]:
        with self.db.session() as session:
            return list(session.scalars(select(Worker).order_by(Worker.heartbeat_at.desc())))

    def recent_worker_rates(self, since_seconds: float) -> dict[str, float]:
        """Generated tokens per generate-second of each worker's recent static batches."""
        with self.db.session() as session:
            rows = session.execute(
                select(BatchRun.worker_id, func.sum(BatchRun.completion_tokens), func.sum(BatchRun.generate_seconds))
                .where(BatchRun.created_at > func.now() - timedelta(seconds=since_seconds))
                .group_by(BatchRun.worker_id)
            ).all()
        return {row[0]: float(row[1]) / float(row[2]) for row in rows if row[2]}

    def list_all_batches(self, status: str | None, owner: str | None, limit: int) -> list[Batch]:
        with self.db.session() as session:
            query = select(Batch).order_by(Batch.created_at.desc()).limit(limit)
            if status:
                query = query.where(Batch.status == status)
            if owner:
                query = query.where(Batch.owner == owner)
            return list(session.scalars(query))

    # Workers.

    def register_worker(self, worker: Worker) -> None:
        with self.db.session() as session:
            session.merge(worker)

    def set_worker_status(self, worker_id: str, status: str) -> None:
        with self.db.session() as session:
            session.execute(update(Worker).where(Worker.id == worker_id).values(status=status, heartbeat_at=func.now()))

    def set_batch_tensor_parallel(self, batch_id: str, size: int) -> None:
        with self.db.session() as session:
            session.execute(update(Batch).where(Batch.id == batch_id).values(tensor_parallel_size=size))

    def ready_workers(self, stale_after_seconds: float) -> list[Worker]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(Worker).where(
                        Worker.status == "ready",
                        Worker.heartbeat_at > func.now() - timedelta(seconds=stale_after_seconds),
                    )
                )
            )


@dataclass(frozen=True)
class WorkerTotals:
    worker_id: str
    batches: int
    prompt_tokens: int
    completion_tokens: int
    generate_seconds: float
    seconds_at_or_below: list[int]  # cumulative counts for the histogram buckets asked for


@dataclass(frozen=True)
class MetricsSnapshot:
    batches_by_status: dict[str, int]
    queued_lines: int
    per_worker: list[WorkerTotals]
    workers: list[Worker]


class LeaseLost(RuntimeError):
    """The shard was taken over by another worker (this one's lease ran out)."""

    def __init__(self, shard_id: int) -> None:
        super().__init__(f"lease on shard {shard_id} was lost")
        self.shard_id = shard_id
