"""Creating a batch from an uploaded file: decide at once whether it can run."""

from __future__ import annotations

from datetime import timedelta

from app.auth import Principal
from app.batch_lines import ENDPOINTS, endpoint_mismatch
from app.config import Settings
from app.errors import InvalidRequest
from app.models import Batch, BatchStatus
from app.repository import JobRepository, new_id, now
from app.schemas import BatchCreate

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}


def create_batch(repo: JobRepository, settings: Settings, request: BatchCreate, caller: Principal) -> Batch:
    """The batch is queued, or failed with line-numbered errors when its file breaks
    the input format (nothing runs then)."""
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

    created = now()
    defaults = {"max_tokens": request.max_tokens or settings.default_max_tokens}
    batch = Batch(
        id=new_id("batch_"),
        owner=caller.owner,
        priority=request.priority,
        input_file_id=source.id,
        endpoint=request.endpoint,
        completion_window=request.completion_window,
        model=model,
        batch_size=request.batch_size or settings.batch_size,
        status=BatchStatus.FAILED if errors else BatchStatus.QUEUED,
        sampling_defaults=defaults,
        metadata_=request.metadata,
        errors=errors[: settings.max_reported_errors] or None,
        request_total=source.line_count,
        created_at=created,
        expires_at=created + COMPLETION_WINDOWS[request.completion_window],
        failed_at=created if errors else None,
    )
    return repo.create_batch(batch, settings.shard_size)
