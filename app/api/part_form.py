"""POST /v1/uploads/{id}/parts's form, read from the request stream: the `data` part goes
to its own object in storage as it arrives (app.jobs.upload_parts.write_part), never held
whole, within UPLOAD_PART_MAX_BYTES."""

from __future__ import annotations

from contextlib import aclosing
from functools import partial

import anyio.to_thread
from anyio.lowlevel import current_token
from fastapi import Request

from app.api.multipart import PartData, PartReader, PartStart, boundary_of, form_events
from app.api.upload_form import FORM_OVERHEAD_BYTES, upload_threads
from app.core.errors import InvalidRequest, PayloadTooLarge
from app.core.storage import ObjectStore
from app.data.models import UploadPart
from app.data.uploads import Uploads
from app.jobs.upload_parts import write_part

PART_FORM_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "UploadPartForm",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "format": "binary", "description": "the part's bytes"}},
                }
            }
        },
    }
}


async def receive_part(
    request: Request, store: ObjectStore, uploads: Uploads, upload_id: str, max_bytes: int, room: int, slack: int
) -> UploadPart:
    """Streams the form's `data` into storage and records it as a part; returns it. `room`:
    the bytes the upload's declared size leaves for it (app.data.uploads.Uploads.room)."""
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"The part is larger than the limit of {max_bytes} bytes.", param="data")
    if declared.isdigit() and int(declared) > room + FORM_OVERHEAD_BYTES:
        raise InvalidRequest(
            f"The part takes the upload past its declared `bytes`: it may hold {room} more bytes.",
            param="bytes",
            code="upload_too_large",
        )
    part: UploadPart | None = None
    ignored = 0
    async with aclosing(form_events(request.stream(), boundary)) as events:
        async for event in events:
            if isinstance(event, PartData):  # a field nobody asked for
                ignored += len(event.data)
                if ignored > FORM_OVERHEAD_BYTES:
                    raise PayloadTooLarge("The form's fields other than `data` are too large.", param="data")
            if not isinstance(event, PartStart) or event.name != "data":
                continue
            if part is not None:
                raise InvalidRequest("Send one `data` part per request.", param="data", code="invalid_value")
            reader = PartReader(events, current_token())
            write = partial(write_part, store, uploads, upload_id, reader, max_bytes, room, slack)  # type: ignore[arg-type]
            part = await anyio.to_thread.run_sync(write, limiter=upload_threads())
            await reader.drain()
    if part is None:
        raise InvalidRequest("Missing the `data` part of the form.", param="data", code="invalid_value")
    return part
