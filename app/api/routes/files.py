"""Files: upload, list, metadata, content, delete."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import CallerDep, RecordsDep, SettingsDep, StoreDep
from app.api.schemas import FileDeleted, FileList, FileObject
from app.api.upload_form import UPLOAD_FORM_OPENAPI, receive_upload
from app.jobs.retention import remove_file_objects, retention_seconds
from app.jobs.uploads import UploadLimits, record_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


def attachment(filename: str) -> str:
    """Content-Disposition for a download (RFC 6266): an ASCII `filename` for old
    clients, and the real name, any script, in RFC 5987's `filename*`."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download.jsonl"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post("", response_model=FileObject, openapi_extra=UPLOAD_FORM_OPENAPI)
async def upload_file(
    request: Request, caller: CallerDep, records: RecordsDep, store: StoreDep, settings: SettingsDep
) -> FileObject:
    """Upload a JSONL file (multipart: `file`, `purpose=batch`, optionally OpenAI's
    `expires_after[anchor]=created_at` and `expires_after[seconds]`, else it expires after
    FILE_RETENTION_DAYS); batch input is checked line by line as it streams to storage,
    within MAX_UPLOAD_BYTES, MAX_UPLOAD_LINES and MAX_LINE_BYTES."""
    limits = UploadLimits(
        settings.max_upload_bytes, settings.max_upload_lines, settings.max_reported_errors, settings.max_line_bytes
    )
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
