"""Uploads (OpenAI's Uploads API): create, add a part, complete into a file, cancel."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CallerDep, SettingsDep, StoreDep, UploadsDep
from app.api.part_form import PART_FORM_OPENAPI, receive_part
from app.api.upload_form import upload_threads
from app.api.upload_schemas import UploadComplete, UploadCreate, UploadObject, UploadPartObject
from app.core.errors import PayloadTooLarge
from app.data.quotas import Quotas
from app.jobs.quotas import check_storage
from app.jobs.retention import retention_seconds
from app.jobs.upload_parts import complete_upload, part_slack, remove_parts
from app.jobs.uploads import UploadLimits

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", response_model=UploadObject)
def create_upload(body: UploadCreate, caller: CallerDep, uploads: UploadsDep, settings: SettingsDep) -> UploadObject:
    """An Upload in `pending`, taking parts until it is completed, cancelled or expires
    (UPLOAD_EXPIRES_SECONDS after its creation)."""
    if body.bytes > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.max_upload_bytes} bytes.", param="bytes")
    check_storage(Quotas(uploads.db), settings, caller.owner, body.bytes)
    upload = uploads.create(
        owner=caller.owner,
        filename=body.filename,
        purpose=body.purpose,
        mime_type=body.mime_type,
        size=body.bytes,
        file_expires_after_seconds=body.expires_after.seconds if body.expires_after else None,
        expires_in_seconds=settings.upload_expires_seconds,
    )
    return UploadObject.of(upload)


@router.get("/{upload_id}", response_model=UploadObject)
def get_upload(upload_id: str, caller: CallerDep, uploads: UploadsDep) -> UploadObject:
    """An Upload, with its File once completed (an extra: OpenAI's API has no retrieve)."""
    upload = uploads.get(upload_id, caller.scope)
    return UploadObject.of(upload, uploads.file_of(upload))


@router.post("/{upload_id}/parts", response_model=UploadPartObject, openapi_extra=PART_FORM_OPENAPI)
async def add_part(
    upload_id: str, request: Request, caller: CallerDep, uploads: UploadsDep, store: StoreDep, settings: SettingsDep
) -> UploadPartObject:
    """A part (multipart `data`, up to UPLOAD_PART_MAX_BYTES), streamed to storage; parts
    may arrive in parallel and in any order. The upload is looked up before the body is read,
    and its parts hold at most its declared `bytes` plus one part's slack (a 400 naming
    `bytes` past that, with nothing stored)."""
    upload = await run_in_threadpool(uploads.pending, upload_id, caller.scope)
    slack = part_slack(upload.bytes, settings.upload_part_max_bytes)
    room = await run_in_threadpool(uploads.room, upload_id, caller.scope, slack)
    part = await receive_part(request, store, uploads, upload_id, settings.upload_part_max_bytes, room, slack)
    return UploadPartObject.of(part)


@router.post("/{upload_id}/complete", response_model=UploadObject)
async def complete(
    upload_id: str,
    body: UploadComplete,
    caller: CallerDep,
    uploads: UploadsDep,
    store: StoreDep,
    settings: SettingsDep,
) -> UploadObject:
    """Joins the parts named, in that order, into a File after the same line check as
    POST /v1/files; the parts must add up to the upload's `bytes` (and `md5`, if given)."""
    upload = await run_in_threadpool(uploads.get, upload_id, caller.scope)
    limits = UploadLimits(
        settings.max_upload_bytes, settings.max_upload_lines, settings.max_reported_errors, settings.max_line_bytes
    )
    keep = retention_seconds(upload.file_expires_after_seconds, settings.file_retention_days)
    done = await anyio.to_thread.run_sync(
        lambda: complete_upload(uploads, store, upload, body.part_ids, body.md5, limits, keep),
        limiter=upload_threads(),
    )
    return UploadObject.of(done.upload, done.file)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
def cancel(upload_id: str, caller: CallerDep, uploads: UploadsDep, store: StoreDep) -> UploadObject:
    """Cancels a pending Upload; its parts are removed (now, or by the next sweep)."""
    upload = uploads.cancel(upload_id, caller.scope)
    remove_parts(store, uploads, upload_id)
    return UploadObject.of(upload)
