"""Records: the reads of jobs, files, windows, keys, workers and metrics, and the writes
that move nothing through a state. State changes live in `app.data.queue`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, inspect, literal, select, true, union_all, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import aliased

from app.core.database import Database
from app.core.errors import Conflict, NotFound
from app.data.ids import now
from app.data.json_values import JobEstimate
from app.data.models import (
    TERMINAL_STATUSES,
    ApiKey,
    FileRecord,
    Job,
    JobStatus,
    Shard,
    ShardStatus,
    Window,
    Worker,
)


def _job_view_sql() -> Select[Any]:
    """Built once: every column of the job, the number of workers that ran it, its retries."""
    child = aliased(Job)
    workers = select(func.count(Window.worker_id.distinct())).where(Window.job_id == Job.id).scalar_subquery()
    children = (
        select(func.array_agg(aggregate_order_by(child.id, child.created_at, child.id)))
        .where(child.parent_job_id == Job.id)
        .scalar_subquery()
    )
    columns = [prop.columns[0].label(prop.key) for prop in inspect(Job).column_attrs]
    return select(*columns, workers.label("view_workers"), children.label("view_children")).where(
        Job.id == bindparam("job_id")
    )


JOB_VIEW_SQL = _job_view_sql()


def visible_to(scope: str | None, owner: str) -> bool:
    """Whether a caller scoped to `scope` (None: admins and workers) may see `owner`'s object."""
    return scope is None or owner == scope


def _older_than(table: type[Job] | type[FileRecord], anchor: Job | FileRecord) -> ColumnElement[bool]:
    """Rows after `anchor` in newest-first order (created_at, then id): the keyset cursor."""
    return (table.created_at < anchor.created_at) | ((table.created_at == anchor.created_at) & (table.id < anchor.id))


class Records:
    """Reads, and the writes that move nothing through a state: files, keys, workers, metrics."""

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
            if record is None or record.deleted_at is not None or not visible_to(scope, record.owner):
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
            if record is None or record.deleted_at is not None or not visible_to(scope, record.owner):
                raise NotFound("file", file_id)
            running = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.input_file_id == file_id, Job.status.not_in([s.value for s in TERMINAL_STATUSES]))
            )
            if running:
                raise Conflict(f"File {file_id} is the input of a batch that has not ended.", param="file_id")
            record.deleted_at = now()
            return record

    def job_with_output(self, file_id: str) -> str | None:
        """The job whose output file this is, if any (its result parts go with the file)."""
        with self.db.session() as session:
            return session.scalar(select(Job.id).where(Job.output_file_id == file_id))

    # Batches.

    def get_job(self, job_id: str, scope: str | None = None) -> Job:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or not visible_to(scope, job.owner):
                raise NotFound("batch", job_id)
            return job

    def list_jobs(self, scope: str | None, limit: int, after: str | None = None) -> list[Job]:
        """Newest first; `after` is the id of the last batch of the previous page."""
        with self.db.session() as session:
            query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
            if scope is not None:
                query = query.where(Job.owner == scope)
            if after is not None:
                query = query.where(_older_than(Job, self.get_job(after, scope)))
            return list(session.scalars(query))

    def job_view(self, job_id: str) -> tuple[Job, int, list[str]]:
        """A job with how many workers ran it and its retries' ids: what a poll of
        `GET /v1/batches/{id}` needs, in one statement and one round trip. Who may see it
        is the caller's check (`app.api.batch_views`: one read serves several owners' polls)."""
        row = self.db.read_one(JOB_VIEW_SQL, {"job_id": job_id})
        if row is None:
            raise NotFound("batch", job_id)
        values = row._asdict()
        workers, children = values.pop("view_workers"), values.pop("view_children")
        return Job(**values), int(workers or 0), list(children or [])

    def descendants(self, job_id: str) -> list[Job]:
        """Retries of the batch, of its retries, and so on, oldest first."""
        with self.db.session() as session:
            tree = select(Job.id).where(Job.parent_job_id == job_id).cte("tree", recursive=True)
            tree = tree.union_all(select(Job.id).join(tree, Job.parent_job_id == tree.c.id))
            return list(session.scalars(select(Job).join(tree, Job.id == tree.c.id).order_by(Job.created_at, Job.id)))

    def windows(self, job_id: str) -> list[Window]:
        """The recorded windows (each one or more static batches) in input order."""
        with self.db.session() as session:
            return list(session.scalars(select(Window).where(Window.job_id == job_id).order_by(Window.first_line)))

    def measured_rate(
        self,
        model: str,
        batch_size: int | None,
        days: float,
        *,
        prompt_tokens: bool = False,
        endpoints: Collection[str] | None = None,
    ) -> tuple[float, int] | None:
        """Generated tokens (or with `prompt_tokens`, prompt tokens: what a model that only
        reads its input reads) per generate-second of recent static batches of jobs on `model`
        at `batch_size` (None: of jobs whose size was fitted to the engine), of `endpoints`
        only when given (those on the same engine call), and how many static batches that is
        (a packed window counts each of its static batches); None without any."""
        sized = Job.batch_size_basis.is_not(None) if batch_size is None else Job.batch_size == batch_size
        same_call = Job.endpoint.in_(list(endpoints)) if endpoints is not None else true()
        counted = Window.prompt_tokens if prompt_tokens else Window.completion_tokens
        with self.db.session() as session:
            tokens, seconds, count = session.execute(
                select(func.sum(counted), func.sum(Window.generate_seconds), func.sum(Window.static_batches))
                .join(Job, Job.id == Window.job_id)
                .where(
                    Job.model == model,
                    sized,
                    same_call,
                    Window.prompts > 0,
                    Window.created_at > func.now() - timedelta(days=days),
                )
            ).one()
        return (float(tokens) / float(seconds), int(count)) if seconds else None

    def set_estimate(self, job_id: str, estimate: JobEstimate) -> None:
        with self.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(estimate=estimate))

    def worker_count(self, job_id: str) -> int:
        """How many workers ran static batches of this job."""
        with self.db.session() as session:
            return int(
                session.scalar(select(func.count(Window.worker_id.distinct())).where(Window.job_id == job_id)) or 0
            )

    def shards(self, job_id: str) -> list[Shard]:
        with self.db.session() as session:
            return list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))

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

    def metrics_snapshot(self, window_seconds_buckets: list[float]) -> MetricsSnapshot:
        """Everything /metrics reports, read in one transaction."""
        with self.db.session() as session:
            statuses = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued_lines = session.scalar(
                select(func.coalesce(func.sum(Shard.end_line - Shard.next_line), 0)).where(
                    Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING])
                )
            )
            # Per model, of queued or in-progress batches; a model some worker serves reads 0 when idle.
            open_lines = (
                select(Job.model, (Shard.end_line - Shard.next_line).label("lines"))
                .join(Job, Job.id == Shard.job_id)
                .where(
                    Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]),
                    Job.status.in_([JobStatus.QUEUED, JobStatus.IN_PROGRESS]),
                )
            )
            lines = union_all(open_lines, select(Worker.model, literal(0))).subquery()
            by_model = session.execute(select(lines.c.model, func.sum(lines.c.lines)).group_by(lines.c.model)).all()
            per_worker = session.execute(
                select(
                    Window.worker_id,
                    func.count(),
                    func.sum(Window.static_batches),
                    func.sum(Window.prompt_tokens),
                    func.sum(Window.completion_tokens),
                    func.sum(Window.generate_seconds),
                    *[func.count().filter(Window.generate_seconds <= edge) for edge in window_seconds_buckets],
                ).group_by(Window.worker_id)
            ).all()
            workers = list(session.scalars(select(Worker)))
        return MetricsSnapshot(
            jobs_by_status={str(k): int(v) for k, v in statuses.items()},
            queued_lines=int(queued_lines or 0),
            queued_lines_by_model={str(model): int(count or 0) for model, count in by_model},
            per_worker=[
                WorkerTotals(
                    worker_id=row[0],
                    windows=int(row[1]),
                    static_batches=int(row[2] or 0),
                    prompt_tokens=int(row[3] or 0),
                    completion_tokens=int(row[4] or 0),
                    generate_seconds=float(row[5] or 0),
                    seconds_at_or_below=[int(c) for c in row[6:]],
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
                select(Window.worker_id, func.sum(Window.completion_tokens), func.sum(Window.generate_seconds))
                .where(Window.created_at > func.now() - timedelta(seconds=since_seconds))
                .group_by(Window.worker_id)
            ).all()
        return {row[0]: float(row[1]) / float(row[2]) for row in rows if row[2]}

    def list_all_jobs(
        self, status: str | None, owner: str | None, limit: int, endpoint: str | None = None
    ) -> list[Job]:
        with self.db.session() as session:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if status:
                query = query.where(Job.status == status)
            if endpoint:
                query = query.where(Job.endpoint == endpoint)
            if owner:
                query = query.where(Job.owner == owner)
            return list(session.scalars(query))

    # Workers.

    def register_worker(self, worker: Worker) -> None:
        with self.db.session() as session:
            session.merge(worker)

    def set_worker_status(self, worker_id: str, status: str) -> None:
        with self.db.session() as session:
            session.execute(update(Worker).where(Worker.id == worker_id).values(status=status, heartbeat_at=func.now()))

    def set_job_tensor_parallel(self, job_id: str, size: int) -> None:
        with self.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(tensor_parallel_size=size))

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
    windows: int
    static_batches: int
    prompt_tokens: int
    completion_tokens: int
    generate_seconds: float
    seconds_at_or_below: list[int]  # cumulative counts for the histogram buckets asked for


@dataclass(frozen=True)
class MetricsSnapshot:
    jobs_by_status: dict[str, int]
    queued_lines: int
    queued_lines_by_model: dict[str, int]  # lines not yet recorded of queued or in-progress batches
    per_worker: list[WorkerTotals]
    workers: list[Worker]
