"""POST /v1/files's form, read from the request stream: the `file` part goes to storage
as it arrives (checked line by line on the way); `purpose` and OpenAI's
`expires_after[anchor]` / `expires_after[seconds]` may come before or after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar, current_token
from fastapi import Request
from pydantic import ValidationError

from app.api.multipart import FormEvent, PartData, PartReader, PartStart, boundary_of, form_events
from app.api.schemas import ExpiresAfter
from app.api.text import unstorable
from app.core.errors import InvalidRequest, PayloadTooLarge
from app.core.storage import ObjectStore
from app.jobs.retention import MAX_EXPIRES_AFTER_SECONDS, MIN_EXPIRES_AFTER_SECONDS, remove_stored
from app.jobs.uploads import StoredUpload, UploadLimits, write_upload

PURPOSES = ("batch",)
# A streaming upload holds a thread while its client sends: uploads get threads of their
# own, so slow ones cannot take every thread the other routes run on (more wait their turn).
MAX_UPLOADS_IN_THREADS = 16
_upload_threads: RunVar[CapacityLimiter] = RunVar("upload_threads")
MAX_FIELD_BYTES = 1024  # a form field other than the file (`purpose`, `expires_after[...]`)
# OpenAI's form fields for `expires_after` (the openai SDK sends nested objects this way).
EXPIRES_AFTER_FIELDS = {"expires_after[anchor]": "anchor", "expires_after[seconds]": "seconds"}
FORM_OVERHEAD_BYTES = 64 << 10  # boundaries, part headers and other fields around the file

# The form as the OpenAPI docs show it (the route reads the stream itself).
UPLOAD_FORM_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "UploadForm",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the JSONL file"},
                        "purpose": {"type": "string", "enum": list(PURPOSES), "default": "batch"},
                        "expires_after[anchor]": {
                            "type": "string",
                            "enum": ["created_at"],
                            "description": "with expires_after[seconds]: the file expires that long after creation",
                        },
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": MIN_EXPIRES_AFTER_SECONDS,
                            "maximum": MAX_EXPIRES_AFTER_SECONDS,
                            "description": "default: FILE_RETENTION_DAYS",
                        },
                    },
                }
            }
        },
    }
}


@dataclass(frozen=True)
class UploadForm:
    stored: StoredUpload
    filename: str
    purpose: str
    expires_after: ExpiresAfter | None  # None: the server's FILE_RETENTION_DAYS


async def receive_upload(request: Request, store: ObjectStore, limits: UploadLimits) -> UploadForm:
    """Streams the form's file into storage and reads its purpose. Anything refused after
    the file was written (a bad purpose, a malformed end) removes it again."""
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the limit of {limits.max_bytes} bytes.")
    stored: StoredUpload | None = None
    filename, purpose, ignored = "upload.jsonl", None, 0
    expires_after: dict[str, str] = {}
    try:
        async with aclosing(form_events(request.stream(), boundary)) as events:
            async for event in events:
                if isinstance(event, PartData):  # a field nobody asked for
                    ignored += len(event.data)
                    if ignored > FORM_OVERHEAD_BYTES:
                        raise PayloadTooLarge("The form's fields other than `file` are too large.", param="file")
                if not isinstance(event, PartStart):
                    continue
                if event.name == "purpose":
                    purpose = _purpose(await _field_text(events, "purpose"))
                elif event.name in EXPIRES_AFTER_FIELDS:
                    field = EXPIRES_AFTER_FIELDS[event.name]
                    expires_after[field] = await _field_text(events, f"expires_after.{field}")
                elif event.name == "file":
                    if stored is not None:
                        raise InvalidRequest("Send one file per upload.", param="file", code="invalid_value")
                    filename = _filename(event.filename)
                    reader = PartReader(events, current_token())
                    write = partial(write_upload, store, reader, purpose="batch", limits=limits)  # type: ignore[arg-type]
                    stored = await anyio.to_thread.run_sync(write, limiter=upload_threads())
                    await reader.drain()
        policy = _expires_after(expires_after)
    except Exception:
        if stored is not None:
            await anyio.to_thread.run_sync(remove_stored, store, stored.storage_key)  # the file and its line index
        raise
    if stored is None:
        raise InvalidRequest("Missing the `file` part of the form.", param="file", code="invalid_value")
    return UploadForm(stored, filename, purpose or "batch", policy)


def upload_threads() -> CapacityLimiter:
    """The uploads' thread limiter of the running event loop."""
    try:
        return _upload_threads.get()
    except LookupError:
        limiter = CapacityLimiter(MAX_UPLOADS_IN_THREADS)
        _upload_threads.set(limiter)
        return limiter


async def _field_text(events: AsyncIterator[FormEvent], param: str) -> str:
    """The rest of a small form field's part, as text."""
    data = bytearray()
    async for event in events:
        if not isinstance(event, PartData):
            break
        data += event.data
        if len(data) > MAX_FIELD_BYTES:
            raise InvalidRequest("A form field is too long.", param=param, code="invalid_value")
    return data.decode("utf-8", "replace")


def _purpose(value: str) -> str:
    if value not in PURPOSES:
        raise InvalidRequest(
            f"purpose: Input should be {' or '.join(map(repr, PURPOSES))}.", param="purpose", code="invalid_value"
        )
    return value


def _expires_after(fields: dict[str, str]) -> ExpiresAfter | None:
    """OpenAI's `expires_after` from its form fields, checked as the JSON object would be
    (both fields, anchor `created_at`, seconds within OpenAI's limits)."""
    if not fields:
        return None
    try:
        return ExpiresAfter.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(["expires_after", *map(str, first["loc"])])
        raise InvalidRequest(f"{param}: {first['msg']}", param=param, code="invalid_value") from None


def _filename(value: str | None) -> str:
    if not value:
        return "upload.jsonl"
    if reason := unstorable(value):
        raise InvalidRequest(f"The file's name {reason}.", param="file", code="invalid_value")
    return value
