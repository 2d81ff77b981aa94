"""ORM tables (SQLAlchemy 2). The API's JSON shapes live in app/api/schemas.py.

The words: a *job* is what OpenAI's API calls a batch (one input file run through one
model); a *shard* is a stretch of a job's consecutive lines that one worker claims; a
*static batch* is one `generate` call of up to `batch_size` prompts; a *window* is the
unit a worker records: one static batch, or, with length-aware packing, several static
batches cut from a window of lines sorted by requested length.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.core.json_column import PydanticJSON
from app.data.json_values import EngineTelemetry, JobDefaults, JobError, JobEstimate, RunInput, UploadCheck


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB, datetime: DateTime(timezone=True)}


class JobStatus(enum.StrEnum):
    VALIDATING = "validating"
    EXPIRING = "expiring"  # past expires_at; stops at the next window boundary, ends `expired`
    FAILED = "failed"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.CANCELLED})
STATUS_CHANNEL = "llm_batch_status"  # NOTIFY'd with a job's id when its status changes (migration 0015)
ENDED_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))  # for partial indexes and raw SQL


class ShardStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # cut short by cancel or expiry; its remaining lines are not run


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the secret (keys are 256-bit random, so a
    fast hash is enough); the secret itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(Text, default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class FileRecord(Base):
    __tablename__ = "files"
    __table_args__ = (
        # The sweeper's walk over live files that expire (app.data.retention).
        Index("ix_files_expiry", "expires_at", postgresql_where=text("deleted_at IS NULL AND expires_at IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True, default="")
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    storage_key: Mapped[str] = mapped_column(Text)
    # For batch input: line errors found at upload, the first line of each url seen, and
    # where every N-th line starts; {} for a file not checked.
    validation: Mapped[UploadCheck] = mapped_column(PydanticJSON(UploadCheck, exclude_unset=True), default=UploadCheck)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the sweeper deletes it (app.jobs.retention); None: kept until deleted.
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "ix_jobs_to_finalize",
            "finalize_lease_expires_at",
            postgresql_where=text("status IN ('finalizing', 'cancelling', 'expiring')"),
        ),
        # Which live jobs read a file (the sweeper keeps those), whose output a file is.
        Index("ix_jobs_live_input", "input_file_id", postgresql_where=text(f"status NOT IN ({ENDED_SQL})")),
        Index("ix_jobs_output_file", "output_file_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True, default="")
    input_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(Text)
    # None until the first claimant fits it to its engine (worker.sizing); the basis says how.
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_size_basis: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)
    sampling_defaults: Mapped[JobDefaults] = mapped_column(PydanticJSON(JobDefaults, exclude_defaults=True))
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONB, nullable=True)
    errors: Mapped[list[JobError] | None] = mapped_column(JSONB, nullable=True)  # OpenAI's errors.data
    # Lines, prompt tokens, requested output tokens and ETA (app.jobs.estimate), while queued.
    estimate: Mapped[JobEstimate | None] = mapped_column(PydanticJSON(JobEstimate), nullable=True)
    # Where its lines run from when regrouped by prompt prefix (app.jobs.run_order); null:
    # from its input file, in input order.
    run_input: Mapped[RunInput | None] = mapped_column(PydanticJSON(RunInput), nullable=True)
    # A retry's parent: the job whose failed lines this one runs again.
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)

    request_total: Mapped[int] = mapped_column(Integer, default=0)
    request_completed: Mapped[int] = mapped_column(Integer, default=0)
    request_failed: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # prefix cache hits
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    generate_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # Engine wall seconds x the accelerators the engine holds (tensor x pipeline parallel).
    accelerator_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    tensor_parallel_size: Mapped[int | None] = mapped_column(Integer, nullable=True)

    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    # Seconds after their creation that the output and error files expire: the batch's
    # output_expires_after, else FILE_RETENTION_DAYS when it was created; None: kept.
    output_expires_after_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)

    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None] = mapped_column(nullable=True)
    first_window_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Finalization (the join, or ending a cancelled or expired job) is leased work: the
    # finalizer holds the job until its lease runs out, so a dead one is replaced.
    finalizer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    finalize_lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finalize_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Shard(Base):
    """Consecutive input lines [start_line, end_line) that one worker claims at a time."""

    __tablename__ = "shards"
    # Partial indexes over open shards only. The claim walks ix_shards_owner_claim_order
    # in claim order (the top priority and deadline hour, then a skip scan over the few
    # owners waiting at it, then the chosen owner's first shard) and stops at the first shard it may take,
    # however long the queue; lost leases are found through ix_shards_running_lease (one
    # row per busy worker).
    __table_args__ = (
        Index("ix_shards_open", "job_id", postgresql_where=text("status IN ('queued', 'running')")),
        Index(
            "ix_shards_owner_claim_order",
            text("priority DESC"),
            "deadline_at",
            "owner",
            "job_created_at",
            "job_id",
            "index",
            postgresql_where=text("status = 'queued'"),
        ),
        Index("ix_shards_running_lease", "lease_expires_at", postgresql_where=text("status = 'running'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    start_line: Mapped[int] = mapped_column(Integer)
    end_line: Mapped[int] = mapped_column(Integer)
    next_line: Mapped[int] = mapped_column(Integer)  # first line not yet recorded
    windows_done: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=ShardStatus.QUEUED)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The job's claim order, copied here so one index serves the claim.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    job_created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The job's deadline (expires_at) cut to the hour: within a priority the earliest deadline
    # goes first, and owners share the workers among jobs due in the same hour.
    deadline_at: Mapped[datetime] = mapped_column(server_default=func.now())
    owner: Mapped[str] = mapped_column(String(128), default="", server_default="")  # whose turn it is


class OwnerTurn(Base):
    """When an owner's work was last claimed: claims go to the least recently served owner
    first (within a priority), so one owner's thousand jobs do not hold everyone else back."""

    __tablename__ = "owner_turns"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_claimed_at: Mapped[datetime]


class OwnerLimit(Base):
    """An admin's override of an owner's quotas (app.jobs.quotas); a null keeps the default."""

    __tablename__ = "owner_limits"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    queued_prompt_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    open_batches: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Window(Base):
    """One recorded window: its static batches' statistics and where its results are."""

    __tablename__ = "windows"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    shard_index: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)  # position of this window within its shard
    static_batches: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # generate calls
    first_line: Mapped[int] = mapped_column(Integer)
    prompts: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # prefix cache hits
    completion_tokens: Mapped[int] = mapped_column(Integer)
    generate_seconds: Mapped[float] = mapped_column(Float)
    accelerator_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    tokens_per_second: Mapped[float] = mapped_column(Float)
    output_lengths: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)  # app.jobs.stats histogram
    # Offsets (from first_line) of the lines that went to the error part; the rest, in
    # order, are the output part's. Lets results be served in input order mid-run.
    error_lines: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)
    # What the engine reported about this window (app.jobs.telemetry): prefill and decode
    # rates, KV-cache use, preemptions, the idle tail.
    engine_stats: Mapped[EngineTelemetry | None] = mapped_column(PydanticJSON(EngineTelemetry), nullable=True)
    worker_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    tensor_parallel_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # loading, ready, stopped
    current_shard_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waits for its next attempt (or is being sent: see next_attempt_at)
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up: older than the max age, or its endpoint was deleted


class WebhookEndpoint(Base):
    """Where an owner's batch events go. The signing secret is stored as given (it signs
    every delivery, so it cannot be a hash), and shown only at creation."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)  # whose jobs' events it receives
    url: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, default="")
    secret: Mapped[str] = mapped_column(Text)  # whsec_ + base64 (Standard Webhooks)
    event_types: Mapped[list[Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, inserted in the transaction that ends the
    job, sent (and retried) by `app.jobs.webhooks.WebhookSender`. `next_attempt_at` is
    both the retry schedule and the sender's lease: a claim moves it past the send's
    timeout, so a sender that dies mid-send leaves the row due again."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("uq_webhook_deliveries_event_endpoint", "event_id", "endpoint_id", unique=True),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))  # evt_...: the webhook-id header, the same on every attempt
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    payload: Mapped[str] = mapped_column(Text)  # the exact body signed and sent on every attempt
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sender_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # who holds (or last held) it
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class UploadStatus(enum.StrEnum):
    PENDING = "pending"  # takes parts until completed, cancelled or past expires_at
    COMPLETED = "completed"  # its parts, joined and checked, are `file_id`
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Upload(Base):
    """OpenAI's Upload: a file sent in parts (`UploadPart`), each stored as an object of
    its own under `uploads/<id>/parts/`, joined into a file at completion. Once it ends,
    the sweeper removes its parts (`parts_removed_at`)."""

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_pending_expiry", "expires_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_uploads_parts_left",
            "created_at",
            postgresql_where=text("status <> 'pending' AND parts_removed_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)  # what the parts named at completion must add up to
    status: Mapped[str] = mapped_column(String(16), default=UploadStatus.PENDING)
    # The file's own retention (OpenAI's expires_after); None: FILE_RETENTION_DAYS.
    file_expires_after_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column()
    parts_removed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class UploadPart(Base):
    __tablename__ = "upload_parts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
