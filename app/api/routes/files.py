"""Files: upload, list, metadata, content, delete."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from app.api.auth import Principal
from app.api.deps import CallerDep, RecordsDep, SettingsDep, StoreDep
from app.api.schemas import FileDeleted, FileList, FileObject
from app.api.upload_form import UPLOAD_FORM_OPENAPI, receive_upload, upload_threads
from app.api.upload_schemas import FILE_IMPORT_OPENAPI, FileImport
from app.core.s3_source import allowed_source
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.quotas import Quotas
from app.data.records import Records
from app.jobs.imports import import_object
from app.jobs.quotas import check_storage
from app.jobs.retention import remove_file_objects, retention_seconds
from app.jobs.uploads import UploadLimits, record_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


def attachment(filename: str) -> str:
    """Content-Disposition for a download (RFC 6266): an ASCII `filename` for old
    clients, and the real name, any script, in RFC 5987's `filename*`."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download.jsonl"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# The form as OpenAI has it, and this service's JSON import beside it.
FILES_POST_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            **UPLOAD_FORM_OPENAPI["requestBody"]["content"],  # type: ignore[dict-item]
            "application/json": {"schema": FILE_IMPORT_OPENAPI},
        },
    }
}


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        settings.max_upload_bytes, settings.max_upload_lines, settings.max_reported_errors, settings.max_line_bytes
    )


@router.post("", response_model=FileObject, openapi_extra=FILES_POST_OPENAPI)
async def upload_file(
    request: Request, caller: CallerDep, records: RecordsDep, store: StoreDep, settings: SettingsDep
) -> FileObject:
    """Upload a JSONL file (multipart: `file`, `purpose=batch`, optionally OpenAI's
    `expires_after[anchor]=created_at` and `expires_after[seconds]`, else it expires after
    FILE_RETENTION_DAYS); batch input is checked line by line as it streams to storage,
    within MAX_UPLOAD_BYTES, MAX_UPLOAD_LINES and MAX_LINE_BYTES. Or, as JSON (this
    service's extension), import one from object storage: `{"url": "s3://bucket/key"}`
    under IMPORT_ALLOWED_PREFIXES, read by the service itself through the same check."""
    declared = request.headers.get("content-length", "")
    adding = int(declared) if declared.isdigit() else 0  # the body's size, before a byte of it is read
    await run_in_threadpool(check_storage, Quotas(records.db), settings, caller.owner, adding)
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() == "application/json":
        return await import_file(request, caller, records, store, settings)
    limits = upload_limits(settings)
    form = await receive_upload(request, store, limits)
    keep = retention_seconds(form.expires_after.seconds if form.expires_after else None, settings.file_retention_days)
    record = await run_in_threadpool(
        lambda: record_upload(
            records,
            store,
            form.stored,
            owner=caller.owner,
            filename=form.filename,
            purpose=form.purpose,
            keep_seconds=keep,
        )
    )
    return FileObject.of(record)


async def import_file(
    request: Request, caller: Principal, records: Records, store: ObjectStore, settings: Settings
) -> FileObject:
    try:
        body = FileImport.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    source = allowed_source(body.url, settings.import_allowed_prefixes)
    keep = retention_seconds(body.expires_after.seconds if body.expires_after else None, settings.file_retention_days)
    record = await anyio.to_thread.run_sync(
        lambda: import_object(
            records,
            store,
            source,
            owner=caller.owner,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            limits=upload_limits(settings),
            keep_seconds=keep,
        ),
        limiter=upload_threads(),
    )
    return FileObject.of(record)


@router.get("", response_model=FileList)
def list_files(
    caller: CallerDep,
    records: RecordsDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> FileList:
    """Your files, newest first, paged with `after`."""
    page = records.list_files(caller.scope, purpose, limit + 1, after)
    return FileList.of([FileObject.of(f) for f in page[:limit]], has_more=len(page) > limit)


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, caller: CallerDep, records: RecordsDep) -> FileObject:
    """A file's metadata."""
    return FileObject.of(records.get_file(file_id, caller.scope))


@router.get("/{file_id}/content")
def get_file_content(file_id: str, caller: CallerDep, records: RecordsDep, store: StoreDep) -> StreamingResponse:
    """The file's bytes, streamed."""
    record = records.get_file(file_id, caller.scope)
    return StreamingResponse(
        store.read_chunks(record.storage_key),
        media_type="application/jsonl",
        headers={"Content-Length": str(record.bytes), "Content-Disposition": attachment(record.filename)},
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, caller: CallerDep, records: RecordsDep, store: StoreDep) -> FileDeleted:
    """Delete a file (refused while a running batch reads it); an ended batch's output file
    takes the batch's result parts with it."""
    record = records.delete_file(file_id, caller.scope)
    remove_file_objects(store, record.storage_key, records.job_with_output(record.id))
    return FileDeleted(id=record.id)
