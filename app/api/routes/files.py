"""Files: upload, list, metadata, content, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import CallerDep, RecordsDep, SettingsDep, StoreDep
from app.api.schemas import FileDeleted, FileList, FileObject
from app.jobs.uploads import UploadLimits, store_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    caller: CallerDep,
    records: RecordsDep,
    store: StoreDep,
    settings: SettingsDep,
    file: UploadFile,
    purpose: Annotated[Literal["batch"], Form()] = "batch",
) -> FileObject:
    """Upload a JSONL file; batch input is checked line by line as it streams to storage."""
    limits = UploadLimits(settings.max_upload_bytes, settings.max_upload_lines, settings.max_reported_errors)
    record = await run_in_threadpool(
        lambda: store_upload(
            records,
            store,
            file.file,
            owner=caller.owner,
            filename=file.filename or "upload.jsonl",
            purpose=purpose,
            limits=limits,
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
        headers={
            "Content-Length": str(record.bytes),
            "Content-Disposition": f'attachment; filename="{record.filename}"',
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, caller: CallerDep, records: RecordsDep, store: StoreDep) -> FileDeleted:
    """Delete a file (refused while a running batch reads it)."""
    record = records.delete_file(file_id, caller.scope)
    store.delete(record.storage_key)
    return FileDeleted(id=record.id)
