"""Creating a job from an uploaded file: decide at once whether it can run, or price it
without running it (a dry run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from app.core.errors import Forbidden, InvalidRequest, NotFound
from app.core.settings import Settings
from app.core.storage import ObjectStore, read_lines
from app.data.ids import new_id, now
from app.data.json_values import JobDefaults, JobError, JobEstimate, RunInput
from app.data.models import FileRecord, Job, JobStatus
from app.data.queue import JobQueue
from app.data.quotas import Quotas
from app.data.records import Records
from app.jobs.endpoints import endpoint_for, is_endpoint, listed
from app.jobs.estimate import estimate_job, spread_sample
from app.jobs.quotas import check_open_batches, token_limit_error, use_and_limits
from app.jobs.retention import retention_seconds
from app.jobs.upload_check import endpoint_mismatch

log = logging.getLogger(__name__)

MIN_COMPLETION_WINDOW = timedelta(hours=1)
MAX_COMPLETION_WINDOW = timedelta(days=7)
_WINDOW_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1)}


def completion_window_length(window: str) -> timedelta:
    """A `completion_window` ("24h", OpenAI's only value; this service also takes "1h" to
    "168h" and "1d" to "7d") as a length; ValueError for anything else. The deadline it
    sets orders the queue: within a priority, the earliest deadline runs first."""
    number, unit = window[:-1], window[-1:]
    if not number.isdigit() or unit not in _WINDOW_UNITS or len(number) > 4:
        raise ValueError(f"completion_window must be a number of hours or days such as 24h or 2d, not {window!r}")
    length = int(number) * _WINDOW_UNITS[unit]
    if not MIN_COMPLETION_WINDOW <= length <= MAX_COMPLETION_WINDOW:
        raise ValueError(f"completion_window must be between 1h and 7d, not {window!r}")
    return length


@dataclass(frozen=True)
class JobSpec:
    """What a new job asks for, whichever surface (API, retry) it came from."""

    input_file_id: str
    endpoint: str
    model: str | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    priority: int = 0
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    truncate_prompts: bool = False
    pack_by_length: bool = True
    batching: Literal["overlapped", "strict"] = "overlapped"
    # OpenAI's output_expires_after.seconds; None: FILE_RETENTION_DAYS (app.jobs.retention).
    output_expires_after_seconds: int | None = None


# (job id, input key, endpoint, line count) -> the job's run input, or None to run the input as it is
RunOrdering = Callable[[str, str, str, int], RunInput | None]


@dataclass(frozen=True)
class Owner:
    """Who the job is for: its owner, and the scope their files are read in (None: any)."""

    name: str
    scope: str | None


@dataclass(frozen=True)
class DryRun:
    """What a job would do; nothing is queued."""

    input_file_id: str
    endpoint: str
    model: str
    file_errors: list[JobError]  # the file breaks the format: the job would fail as a whole
    estimate: JobEstimate


@dataclass(frozen=True)
class CheckedSpec:
    source: FileRecord
    model: str
    batch_size: int | None  # None: the first claimant fits it to its engine
    defaults: JobDefaults
    file_errors: list[JobError] = field(default_factory=list)  # line-numbered: the job fails as a whole


def check_priority(priority: int | None, scope: str | None) -> None:
    """Only admins put work ahead of the queue; anyone may put their own work behind it."""
    if priority is not None and priority > 0 and scope is not None:
        raise Forbidden("A priority above 0 needs an admin key; 0 and below are yours to set.", param="priority")


def check_spec(records: Records, settings: Settings, spec: JobSpec, scope: str | None) -> CheckedSpec:
    check_priority(spec.priority, scope)
    if not is_endpoint(spec.endpoint):
        raise InvalidRequest(f"Unsupported endpoint {spec.endpoint!r}; use one of {listed()}.", param="endpoint")
    # The claim's model filter sends each job to the worker kind that holds its model.
    kind = endpoint_for(spec.endpoint)
    served = kind.served_model(settings)
    model = spec.model or served
    if kind.accepts_adapters() and model in settings.lora_modules:
        raise InvalidRequest(
            f"{model!r} is a LoRA adapter of {served!r}: create the batch for {served!r} "
            "(or no model) and name the adapter in each line's body.model.",
            param="model",
        )
    if model != served:
        raise InvalidRequest(
            f"Model {model!r} is not served here for {spec.endpoint}; workers hold {served!r}.", param="model"
        )
    source = records.get_file(spec.input_file_id, scope)
    if source.expires_at is not None and source.expires_at <= now():
        raise NotFound("file", source.id)  # expired: the next sweep deletes it
    if source.purpose != "batch":
        raise InvalidRequest(f"File {source.id} has purpose {source.purpose!r}, not 'batch'.", param="input_file_id")

    errors = list(source.validation.errors)
    mismatch = endpoint_mismatch(source.validation, spec.endpoint)
    if mismatch is not None and len(errors) < settings.max_reported_errors:
        errors.append(mismatch.as_error())
    errors.sort(key=lambda e: e.get("line") or 0)
    if source.line_count == 0:
        errors = [JobError(code="empty_file", message="The input file has no lines.", param="input_file_id")]
    defaults = JobDefaults(
        max_tokens=spec.max_tokens or settings.default_max_tokens,
        truncate_prompts=spec.truncate_prompts,
        pack_window=settings.packing_window_batches if spec.pack_by_length else None,
        # A kind whose engine call cannot overlap runs strict: stored so, a worker sharing its
        # engine does not claim it only to stop sharing for it.
        batching=spec.batching if kind.call.overlaps else "strict",
    )
    return CheckedSpec(
        source=source,
        model=model,
        batch_size=spec.batch_size or settings.batch_size,
        defaults=defaults,
        file_errors=errors[: settings.max_reported_errors],
    )


def create_job(
    records: Records,
    queue: JobQueue,
    settings: Settings,
    spec: JobSpec,
    owner: Owner,
    parent_job_id: str | None = None,
    order: RunOrdering | None = None,
) -> Job:
    """The job is queued, or failed with line-numbered errors when its file breaks the
    input format, or with `token_limit_exceeded` past the owner's queued-token quota (nothing
    runs then). Past the owner's quota of batches not yet ended: QuotaExceeded, nothing stored.
    `order`, when given, regroups a queued job's lines by prompt prefix (app.jobs.run_order)."""
    checked = check_spec(records, settings, spec, owner.scope)
    quotas = Quotas(records.db)
    use, limits = use_and_limits(quotas, settings, owner.name)  # read once for both checks
    check_open_batches(owner.name, use, limits)
    errors = checked.file_errors or None
    if not errors:  # OpenAI's queue limit: the batch fails at once, nothing queued
        over = token_limit_error(owner.name, use, limits, checked.model, checked.source.bytes // 4)
        errors = [over] if over is not None else None
    created, job_id = now(), new_id("batch_")
    run_input = None
    if not errors and order is not None and spec.pack_by_length:  # input order asked for: kept
        try:
            run_input = order(job_id, checked.source.storage_key, spec.endpoint, checked.source.line_count)
        except Exception:  # an optimisation only: the batch runs in input order, grouped per window
            log.warning("job %s: regrouping its lines by prefix failed; they run in input order", job_id, exc_info=True)
    job = Job(
        id=job_id,
        run_input=run_input,
        owner=owner.name,
        priority=spec.priority,
        input_file_id=checked.source.id,
        endpoint=spec.endpoint,
        completion_window=spec.completion_window,
        model=checked.model,
        batch_size=checked.batch_size,
        status=JobStatus.FAILED if errors else JobStatus.QUEUED,
        sampling_defaults=checked.defaults,
        metadata_=spec.metadata,
        errors=errors,
        request_total=checked.source.line_count,
        created_at=created,
        expires_at=created + completion_window_length(spec.completion_window),
        failed_at=created if errors else None,
        parent_job_id=parent_job_id,
        output_expires_after_seconds=retention_seconds(spec.output_expires_after_seconds, settings.file_retention_days),
    )
    return queue.create_job(job, settings.shard_size)


def dry_run(records: Records, store: ObjectStore, settings: Settings, spec: JobSpec, scope: str | None) -> DryRun:
    """What the job would do, without queueing it: every line planned as the worker
    would, tokens counted with the model's tokenizer, and an ETA."""
    checked = check_spec(records, settings, spec, scope)
    return DryRun(
        input_file_id=checked.source.id,
        endpoint=spec.endpoint,
        model=checked.model,
        file_errors=checked.file_errors,
        estimate=_estimate(records, store, settings, checked, spec.endpoint),
    )


def _estimate(
    records: Records,
    store: ObjectStore,
    settings: Settings,
    checked: CheckedSpec,
    endpoint: str,
    sample_lines: int | None = None,
) -> JobEstimate:
    """Every line planned, or (`sample_lines`) an even sample of them, scaled up."""
    lines = read_lines(store, checked.source.storage_key)
    total = checked.source.line_count
    return estimate_job(
        records,
        settings,
        spread_sample(lines, total, sample_lines) if sample_lines else enumerate(lines),
        endpoint=endpoint,
        defaults=checked.defaults,
        model=checked.model,
        batch_size=checked.batch_size,
        total_lines=checked.source.line_count,
    )


def record_estimate(records: Records, store: ObjectStore, settings: Settings, job_id: str) -> None:
    """Counts a queued job's tokens and ETA after it is created (it shows on the batch), from
    ESTIMATE_SAMPLE_LINES lines spread over its file (the worker tokenizes every line; this
    does not do it a second time)."""
    try:
        job = records.get_job(job_id)
        source = records.get_file(job.input_file_id)
        checked = CheckedSpec(source, job.model, job.batch_size, job.sampling_defaults)
        estimate = _estimate(records, store, settings, checked, job.endpoint, settings.estimate_sample_lines)
        records.set_estimate(job_id, estimate)
    except Exception:  # an estimate is a courtesy; the job runs without one
        log.exception("could not estimate %s", job_id)
