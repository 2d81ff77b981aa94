"""The API's JSON shapes (OpenAI's file and batch objects, plus this service's extras)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from app.api.text import unstorable
from app.data.json_values import JobError, JobEstimate
from app.data.models import FileRecord, Job, JobStatus
from app.jobs.create import DryRun, JobSpec, completion_window_length
from app.jobs.endpoints import listed
from app.jobs.estimate import deadline_at_risk
from app.jobs.retention import MAX_EXPIRES_AFTER_SECONDS, MIN_EXPIRES_AFTER_SECONDS
from app.jobs.retries import RetryOverrides
from app.jobs.stats import Throughput, cost, throughput


def unix(ts: datetime | None) -> int | None:
    return int(ts.timestamp()) if ts else None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = Field(default=None, description="when the file is deleted; null: kept until deleted")
    # Extras: what the upload check found.
    lines: int
    sha256: str = Field(
        description="SHA-256 (hex) of the content; empty for an output S3 joined by server-side copy, unread here"
    )

    @classmethod
    def of(cls, record: FileRecord) -> FileObject:
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=unix(record.created_at) or 0,
            filename=record.filename,
            purpose=record.purpose,
            expires_at=unix(record.expires_at),
            lines=record.line_count,
            sha256=record.sha256,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class Page(BaseModel):
    object: Literal["list"] = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileList(Page):
    data: list[FileObject]

    @classmethod
    def of(cls, data: list[FileObject], has_more: bool) -> FileList:
        return cls(
            data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
        )


MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


def _storable(value: str) -> str:
    if reason := unstorable(value):
        raise ValueError(reason)
    return value


# Every string a request body carries: Postgres cannot store NUL or lone surrogates.
StorableStr = Annotated[str, AfterValidator(_storable)]


def _metadata_limits(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return value
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs")
    for key, item in value.items():
        if reason := unstorable(key) or unstorable(item):
            raise ValueError(f"a key or value {reason}")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise ValueError(f"key {key[:20]!r}... is longer than {MAX_METADATA_KEY_CHARS} characters")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(f"value of {key!r} is longer than {MAX_METADATA_VALUE_CHARS} characters")
    return value


# OpenAI's limits on a batch's metadata, for a new batch and a retry alike.
Metadata = Annotated[
    dict[str, str] | None,
    AfterValidator(_metadata_limits),
    Field(description="up to 16 pairs; keys up to 64 characters, values up to 512"),
]


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy of a file: `seconds` after its creation."""

    anchor: Literal["created_at"] = Field(description="what the expiry counts from; only `created_at`")
    seconds: int = Field(
        ge=MIN_EXPIRES_AFTER_SECONDS,
        le=MAX_EXPIRES_AFTER_SECONDS,
        description=f"between {MIN_EXPIRES_AFTER_SECONDS} (1 hour) and {MAX_EXPIRES_AFTER_SECONDS} (30 days)",
    )


def _completion_window(window: str) -> str:
    completion_window_length(window)  # ValueError: a 400 naming completion_window
    return window


CompletionWindow = Annotated[str, AfterValidator(_completion_window)]


class BatchCreate(BaseModel):
    input_file_id: StorableStr
    endpoint: StorableStr = Field(description=f"one of {listed()}")
    completion_window: CompletionWindow = Field(
        default="24h",
        description="the deadline, from creation: OpenAI's `24h` (the default), or (this service's extension) "
        "`1h` to `168h`, `1d` to `7d`; within a priority the earliest deadline runs first, and a batch not done "
        "by it ends `expired` with what was done",
    )
    metadata: Metadata = None
    priority: int = Field(default=0, ge=-100, le=100, description="higher runs first; above 0 needs an admin key")
    output_expires_after: ExpiresAfter | None = Field(
        default=None,
        description="when the output and error files expire, from their own creation; default: FILE_RETENTION_DAYS",
    )

    # This service's own fields (the openai SDK sends them through `extra_body`).
    model: StorableStr | None = Field(
        default=None,
        description="model to run; default: the one the workers hold for the endpoint (the embedding "
        "model for /v1/embeddings)",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="prompts per static batch; default: BATCH_SIZE, else fitted to the engine that runs the batch "
        "(its max_num_seqs, cut to the lines its KV cache holds; the batch shows the size and why)",
    )
    batching: Literal["overlapped", "strict"] = Field(
        default="overlapped",
        description="overlapped (the default): the next static batch enters the engine while the last one drains, "
        "each recorded when its last answer ends; strict: one blocking generate per static batch, which waits for "
        "its slowest answer (the seed's static batching)",
    )
    max_tokens: int | None = Field(default=None, ge=1, description="default max_tokens for lines without one")
    truncate_prompts: bool = Field(
        default=False,
        description="cut prompts too long for the context to fit (keeping their end) instead of failing those lines",
    )
    pack_by_length: bool = Field(
        default=True,
        description="length-aware packing (the default): within windows of PACKING_WINDOW_BATCHES static batches, "
        "batch lines of similar max_tokens together so short answers do not wait for long ones (output stays in "
        "input order); false runs static batches of consecutive lines",
    )
    dry_run: bool = Field(
        default=False,
        description="check every line and count tokens with the model's tokenizer, return the estimate, queue nothing",
    )

    def spec(self) -> JobSpec:
        expires = self.output_expires_after
        return JobSpec(
            **self.model_dump(exclude={"dry_run", "output_expires_after"}),
            output_expires_after_seconds=expires.seconds if expires else None,
        )


class BatchRetry(BaseModel):
    """Overrides for a retry; everything else is the parent's."""

    max_tokens: int | None = Field(default=None, ge=1, description="replaces each line's max_tokens")
    truncate_prompts: bool = Field(default=False, description="cut prompts too long for the context to fit")
    batch_size: int | None = Field(default=None, ge=1, le=100_000)
    priority: int | None = Field(default=None, ge=-100, le=100)
    metadata: Metadata = None

    def overrides(self) -> RetryOverrides:
        return RetryOverrides(**self.model_dump())


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str | None = None
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


# The statuses OpenAI's API knows: `queued` shows as `validating` until a worker
# takes it; `expiring` (stopping at a batch boundary) as `finalizing`.
class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens vLLM's prefix cache served")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """OpenAI's batch usage: the job's tokens so far."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchThroughput(Throughput):
    """The job's rates and timings (app.jobs.stats.throughput), plus who ran it."""

    tensor_parallel_size: int | None
    workers: int | None = Field(description="workers that ran its static batches (on a single batch's view)")


class BatchCost(BaseModel):
    """What the batch held of the accelerators (app.jobs.stats.cost)."""

    accelerator_seconds: float = Field(description="engine wall seconds x tensor parallel size, over its windows")
    gpu_hour_price: float | None = Field(description="GPU_HOUR_PRICE, the price of one accelerator-hour")
    cost: float | None = Field(description="accelerator-hours x GPU_HOUR_PRICE; null without a price")
    cost_per_million_output_tokens: float | None


OPENAI_STATUS = {JobStatus.QUEUED: JobStatus.VALIDATING, JobStatus.EXPIRING: JobStatus.FINALIZING}


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    # Extras.
    model: str
    batch_size: int | None = Field(description="prompts per static batch; null until a worker fits it to its engine")
    batch_size_basis: str | None = Field(description="how the size was fitted to the engine; null when it was given")
    batching: Literal["overlapped", "strict"]
    priority: int
    usage: BatchUsage
    cost: BatchCost
    queue_status: str = Field(description="the service's own status; `queued` is shown as `validating` above")
    throughput: BatchThroughput
    estimate: JobEstimate | None = Field(
        default=None, description="lines, prompt tokens, requested output tokens and ETA, counted when queued"
    )
    deadline_at_risk: bool | None = Field(
        default=None, description="true: at the measured rate it cannot finish by expires_at; null: ended, or no rate"
    )
    parent_batch_id: str | None = Field(default=None, description="the batch whose failed lines this one retries")
    child_batch_ids: list[str] | None = Field(default=None, description="retries of this batch, oldest first")

    @classmethod
    def of(
        cls,
        job: Job,
        gpu_hour_price: float | None = None,
        workers: int | None = None,
        children: list[str] | None = None,
    ) -> BatchObject:
        status = JobStatus(job.status)
        return cls(
            id=job.id,
            endpoint=job.endpoint,
            errors=BatchErrors(data=[BatchError(**e) for e in job.errors]) if job.errors else None,
            input_file_id=job.input_file_id,
            completion_window=job.completion_window,
            status=OPENAI_STATUS.get(status, status).value,
            output_file_id=job.output_file_id,
            error_file_id=job.error_file_id,
            created_at=unix(job.created_at) or 0,
            in_progress_at=unix(job.in_progress_at),
            expires_at=unix(job.expires_at),
            finalizing_at=unix(job.finalizing_at),
            completed_at=unix(job.completed_at),
            failed_at=unix(job.failed_at),
            expired_at=unix(job.expired_at),
            cancelling_at=unix(job.cancelling_at),
            cancelled_at=unix(job.cancelled_at),
            request_counts=RequestCounts(
                total=job.request_total, completed=job.request_completed, failed=job.request_failed
            ),
            metadata=job.metadata_,
            model=job.model,
            batch_size=job.batch_size,
            batch_size_basis=job.batch_size_basis,
            batching=job.sampling_defaults.batching,
            cost=BatchCost(**asdict(cost(job, gpu_hour_price))),
            usage=BatchUsage(
                input_tokens=job.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=job.cached_tokens),
                output_tokens=job.completion_tokens,
                output_tokens_details=OutputTokensDetails(),
                total_tokens=job.prompt_tokens + job.completion_tokens,
            ),
            priority=job.priority,
            queue_status=status.value,
            throughput=BatchThroughput(
                **throughput(job).model_dump(), tensor_parallel_size=job.tensor_parallel_size, workers=workers
            ),
            estimate=job.estimate,
            deadline_at_risk=deadline_at_risk(job),
            parent_batch_id=job.parent_job_id,
            child_batch_ids=children,
        )


class BatchEstimate(JobEstimate):
    """A dry run's answer: what the batch would do. Nothing is queued."""

    object: Literal["batch.estimate"] = "batch.estimate"
    input_file_id: str
    endpoint: str
    model: str
    would_fail: bool = Field(description="the file breaks the input format, so the batch would fail as a whole")
    file_errors: list[JobError]

    @classmethod
    def of(cls, run: DryRun) -> BatchEstimate:
        return cls(
            **run.estimate.model_dump(),
            input_file_id=run.input_file_id,
            endpoint=run.endpoint,
            model=run.model,
            would_fail=bool(run.file_errors),
            file_errors=run.file_errors,
        )


class BatchList(Page):
    data: list[BatchObject]

    @classmethod
    def of(cls, data: list[BatchObject], has_more: bool) -> BatchList:
        return cls(
            data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
        )
