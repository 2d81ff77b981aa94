"""Creating a batch from an uploaded file: decide at once whether it can run, or price
it without running it (a dry run)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.api.auth import Principal
from app.api.schemas import BatchCreate
from app.core.errors import InvalidRequest
from app.core.settings import Settings
from app.core.storage import ObjectStore, read_lines
from app.data.models import Batch, BatchStatus, FileRecord
from app.data.repository import JobRepository, new_id, now
from app.jobs.estimate import estimate_job
from app.jobs.lines import ENDPOINTS, endpoint_mismatch

log = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}


@dataclass(frozen=True)
class CheckedRequest:
    source: FileRecord
    model: str
    batch_size: int
    sampling_defaults: dict[str, Any]
    file_errors: list[dict[str, Any]]  # line-numbered format errors: the batch fails as a whole


def check_request(repo: JobRepository, settings: Settings, request: BatchCreate, caller: Principal) -> CheckedRequest:
    if request.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"Unsupported endpoint {request.endpoint!r}; use one of {', '.join(ENDPOINTS)}.", param="endpoint"
        )
    model = request.model or settings.model_name
    if model != settings.model_name:
        raise InvalidRequest(
            f"Model {model!r} is not served here; workers hold {settings.model_name!r}.", param="model"
        )
    source = repo.get_file(request.input_file_id, caller.scope)
    if source.purpose != "batch":
        raise InvalidRequest(f"File {source.id} has purpose {source.purpose!r}, not 'batch'.", param="input_file_id")

    errors = list(source.validation.get("errors", []))
    mismatch = endpoint_mismatch(source.validation, request.endpoint)
    if mismatch is not None and len(errors) < settings.max_reported_errors:
        errors.append(mismatch.as_error())
    errors.sort(key=lambda e: e.get("line") or 0)
    if source.line_count == 0:
        errors = [{"code": "empty_file", "message": "The input file has no lines.", "param": "input_file_id"}]
    defaults: dict[str, Any] = {"max_tokens": request.max_tokens or settings.default_max_tokens}
    if request.truncate_prompts:
        defaults["truncate_prompts"] = True
    if request.pack_by_length:
        defaults["pack_window"] = settings.packing_window_batches
    return CheckedRequest(
        source=source,
        model=model,
        batch_size=request.batch_size or settings.batch_size,
        sampling_defaults=defaults,
        file_errors=errors[: settings.max_reported_errors],
    )


def create_batch(
    repo: JobRepository,
    settings: Settings,
    request: BatchCreate,
    caller: Principal,
    parent_batch_id: str | None = None,
) -> Batch:
    """The batch is queued, or failed with line-numbered errors when its file breaks
    the input format (nothing runs then)."""
    checked = check_request(repo, settings, request, caller)
    created = now()
    batch = Batch(
        id=new_id("batch_"),
        owner=caller.owner,
        priority=request.priority,
        input_file_id=checked.source.id,
        endpoint=request.endpoint,
        completion_window=request.completion_window,
        model=checked.model,
        batch_size=checked.batch_size,
        status=BatchStatus.FAILED if checked.file_errors else BatchStatus.QUEUED,
        sampling_defaults=checked.sampling_defaults,
        metadata_=request.metadata,
        errors=checked.file_errors or None,
        request_total=checked.source.line_count,
        created_at=created,
        expires_at=created + COMPLETION_WINDOWS[request.completion_window],
        failed_at=created if checked.file_errors else None,
        parent_batch_id=parent_batch_id,
    )
    return repo.create_batch(batch, settings.shard_size)


def dry_run(
    repo: JobRepository, store: ObjectStore, settings: Settings, request: BatchCreate, caller: Principal
) -> dict[str, Any]:
    """What the batch would do, without queueing it: every line planned as the worker
    would, tokens counted with the model's tokenizer, and an ETA."""
    checked = check_request(repo, settings, request, caller)
    return {
        "object": "batch.estimate",
        "input_file_id": checked.source.id,
        "endpoint": request.endpoint,
        "model": checked.model,
        "would_fail": bool(checked.file_errors),
        "file_errors": checked.file_errors,
        **_estimate(repo, store, settings, checked, request.endpoint),
    }


def _estimate(
    repo: JobRepository,
    store: ObjectStore,
    settings: Settings,
    checked: CheckedRequest,
    endpoint: str,
    max_lines: int | None = None,
) -> dict[str, Any]:
    lines = read_lines(store, checked.source.storage_key)
    return estimate_job(
        repo,
        settings,
        itertools.islice(lines, max_lines) if max_lines else lines,
        endpoint=endpoint,
        defaults=checked.sampling_defaults,
        model=checked.model,
        batch_size=checked.batch_size,
        total_lines=checked.source.line_count,
    )


def record_estimate(repo: JobRepository, store: ObjectStore, settings: Settings, batch_id: str) -> None:
    """Counts a queued batch's tokens and ETA after it is created (it shows on the batch).
    Past ESTIMATE_MAX_LINES lines the figures are scaled up from the first lines."""
    try:
        batch = repo.get_batch(batch_id)
        source = repo.get_file(batch.input_file_id)
        checked = CheckedRequest(source, batch.model, batch.batch_size, batch.sampling_defaults, [])
        estimate = _estimate(repo, store, settings, checked, batch.endpoint, settings.estimate_max_lines)
        repo.set_estimate(batch_id, estimate)
    except Exception:  # an estimate is a courtesy; the batch runs without one
        log.exception("could not estimate %s", batch_id)
