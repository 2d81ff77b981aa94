"""`/v1/limits` (this service's extension): an owner's quotas and what it uses of them; an
admin reads anyone's and overrides them per owner."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.api.deps import CallerDep, RecordsDep, SettingsDep
from app.core.errors import Forbidden
from app.core.settings import Settings
from app.data.quotas import Quotas
from app.jobs.quotas import use_and_limits

router = APIRouter(prefix="/v1/limits", tags=["limits"])


class Bound(BaseModel):
    used: int
    limit: int


class TokenBound(BaseModel):
    limit: int = Field(description="per model")
    used_by_model: dict[str, int] = Field(description="prompt tokens queued or running, by model")


class LimitsObject(BaseModel):
    object: Literal["limits"] = "limits"
    owner: str
    stored_bytes: Bound = Field(description="files (inputs, outputs, error files) and upload parts kept")
    open_batches: Bound = Field(description="batches not yet ended")
    queued_prompt_tokens: TokenBound = Field(description="a batch past it fails at once with token_limit_exceeded")
    rate_limit_requests_per_minute: int = Field(description="per API key and API process; 0: unlimited")


class LimitsUpdate(BaseModel):
    """An admin's override for one owner: a field given sets it, null puts back the default."""

    owner: str = Field(min_length=1, max_length=128)
    stored_bytes: int | None = Field(default=None, ge=0)
    queued_prompt_tokens: int | None = Field(default=None, ge=0)
    open_batches: int | None = Field(default=None, ge=0)


def _limits(quotas: Quotas, settings: Settings, owner: str) -> LimitsObject:
    use, limits = use_and_limits(quotas, settings, owner)
    return LimitsObject(
        owner=owner,
        stored_bytes=Bound(used=use.stored_bytes, limit=limits.stored_bytes),
        open_batches=Bound(used=use.open_batches, limit=limits.open_batches),
        queued_prompt_tokens=TokenBound(limit=limits.queued_prompt_tokens, used_by_model=use.queued_prompt_tokens),
        rate_limit_requests_per_minute=settings.rate_limit_requests_per_minute,
    )


@router.get("", response_model=LimitsObject)
async def get_limits(
    caller: CallerDep,
    records: RecordsDep,
    settings: SettingsDep,
    owner: str | None = Query(default=None, max_length=128, description="another owner's (admins only)"),
) -> LimitsObject:
    """Your quotas and what you use of them (an admin: any owner's)."""
    if owner is not None and owner != caller.owner and not caller.is_admin:
        raise Forbidden("Only an admin reads another owner's limits.", param="owner")
    return await run_in_threadpool(_limits, Quotas(records.db), settings, owner or caller.owner)


@router.post("", response_model=LimitsObject)
async def set_limits(body: LimitsUpdate, caller: CallerDep, records: RecordsDep, settings: SettingsDep) -> LimitsObject:
    """Override an owner's quotas (admins only); the fields sent change, the others stay."""
    if not caller.is_admin:
        raise Forbidden("Only an admin changes limits.", param="owner")
    values: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set - {"owner"}}
    quotas = Quotas(records.db)
    if values:
        await run_in_threadpool(quotas.set_override, body.owner, values)
    return await run_in_threadpool(_limits, quotas, settings, body.owner)
