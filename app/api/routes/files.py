"""Files: upload, metadata, content."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import RepoDep, SettingsDep, StoreDep
from app.schemas import FileObject
from app.uploads import store_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    repo: RepoDep,
    store: StoreDep,
    settings: SettingsDep,
    file: UploadFile,
    purpose: Annotated[Literal["batch", "batch_output"], Form()] = "batch",
) -> FileObject:
    """Upload a JSONL file; batch input is checked line by line as it streams to storage."""
    record = await run_in_threadpool(
        store_upload, repo, store, file.file, file.filename or "upload.jsonl", purpose, settings.max_reported_errors
    )
    return FileObject.of(record)


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, repo: RepoDep) -> FileObject:
    """A file's metadata."""
    return FileObject.of(repo.get_file(file_id))


@router.get("/{file_id}/content")
def get_file_content(file_id: str, repo: RepoDep, store: StoreDep) -> StreamingResponse:
    """The file's bytes, streamed."""
    record = repo.get_file(file_id)
    return StreamingResponse(
        store.read_chunks(record.storage_key),
        media_type="application/jsonl",
        headers={
            "Content-Length": str(record.bytes),
            "Content-Disposition": f'attachment; filename="{record.filename}"',
        },
    )
