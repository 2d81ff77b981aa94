"""Quotas per owner: bytes stored, batches not yet ended, prompt tokens queued per model.

Defaults come from settings (QUOTA_STORED_BYTES, QUOTA_OPEN_BATCHES,
QUOTA_QUEUED_PROMPT_TOKENS); an admin overrides them per owner. An upload or a batch over a
quota is refused before anything is stored or queued: a 429 `insufficient_quota` for bytes
and batches (waiting does not help: the message says what frees it), or, as OpenAI's Batch
API does for its queue limit, a batch created `failed` at once with `token_limit_exceeded`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import QuotaExceeded
from app.core.settings import Settings
from app.data.json_values import JobError
from app.data.quotas import OwnerUse, Quotas


@dataclass(frozen=True)
class OwnerLimits:
    stored_bytes: int
    queued_prompt_tokens: int  # per model
    open_batches: int


def limits_of(quotas: Quotas, settings: Settings, owner: str) -> OwnerLimits:
    override = quotas.override(owner)

    def pick(name: str, default: int) -> int:
        value = getattr(override, name, None) if override is not None else None
        return default if value is None else int(value)

    return OwnerLimits(
        stored_bytes=pick("stored_bytes", settings.quota_stored_bytes),
        queued_prompt_tokens=pick("queued_prompt_tokens", settings.quota_queued_prompt_tokens),
        open_batches=pick("open_batches", settings.quota_open_batches),
    )


def check_storage(quotas: Quotas, settings: Settings, owner: str, adding: int) -> None:
    """Refuses `adding` more bytes when the owner's stored bytes would pass the quota."""
    limit = limits_of(quotas, settings, owner).stored_bytes
    used = quotas.use(owner).stored_bytes
    if used + adding > limit:
        raise QuotaExceeded(
            f"Storage quota: {owner} may keep {limit} bytes and keeps {used}; this adds {adding}. "
            "Delete files (DELETE /v1/files/{id}) or wait for them to expire, or ask an admin to raise the quota.",
            param="file",
        )


def check_open_batches(owner: str, use: OwnerUse, limits: OwnerLimits) -> None:
    """Refuses one more batch when the owner's batches not yet ended are at the quota."""
    limit, used = limits.open_batches, use.open_batches
    if used + 1 > limit:
        raise QuotaExceeded(
            f"Batch quota: {owner} may have {limit} batches not yet ended and has {used}. "
            "Wait for some to end or cancel them, or ask an admin to raise the quota.",
            param="input_file_id",
        )


def token_limit_error(owner: str, use: OwnerUse, limits: OwnerLimits, model: str, adding: int) -> JobError | None:
    """The `token_limit_exceeded` error a batch of `adding` prompt tokens fails with, or None."""
    limit, queued = limits.queued_prompt_tokens, use.queued_prompt_tokens.get(model, 0)
    if queued + adding <= limit:
        return None
    return JobError(
        code="token_limit_exceeded",
        message=f"Enqueued token limit reached for {model}: {owner} may have {limit} prompt tokens queued and has "
        f"{queued}; this batch adds about {adding}. Try again once queued batches have run, or ask an admin to raise "
        "the quota.",
        param=None,
    )


def use_and_limits(quotas: Quotas, settings: Settings, owner: str) -> tuple[OwnerUse, OwnerLimits]:
    """The owner's use and limits, read once for every check of a request."""
    return quotas.use(owner), limits_of(quotas, settings, owner)
