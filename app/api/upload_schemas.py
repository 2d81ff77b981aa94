"""The JSON shapes of OpenAI's Uploads API (an Upload, an Upload Part) and of an import
from object storage (POST /v1/files with a JSON body, this service's extension)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import ExpiresAfter, FileObject, StorableStr, unix
from app.data.models import FileRecord, Upload, UploadPart
from app.data.uploads import MAX_PARTS_PER_UPLOAD, shown_status

MAX_NAME_CHARS = 1024


class UploadCreate(BaseModel):
    bytes: int = Field(ge=1, description="the file's size: the parts named at completion must add up to it")
    filename: StorableStr = Field(min_length=1, max_length=MAX_NAME_CHARS)
    purpose: Literal["batch"] = "batch"
    mime_type: StorableStr = Field(max_length=MAX_NAME_CHARS, description="accepted as given (application/jsonl)")
    expires_after: ExpiresAfter | None = Field(
        default=None, description="the file's expiry, from its creation; default FILE_RETENTION_DAYS"
    )


class UploadComplete(BaseModel):
    part_ids: list[StorableStr] = Field(max_length=MAX_PARTS_PER_UPLOAD, description="the parts, in file order")
    md5: StorableStr | None = Field(default=None, max_length=64, description="the file's MD5 (hex), checked")


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None

    @classmethod
    def of(cls, upload: Upload, file: FileRecord | None = None) -> UploadObject:
        return cls(
            id=upload.id,
            bytes=upload.bytes,
            created_at=unix(upload.created_at) or 0,
            expires_at=unix(upload.expires_at) or 0,
            filename=upload.filename,
            purpose=upload.purpose,
            status=shown_status(upload),  # type: ignore[arg-type]
            file=FileObject.of(file) if file is not None else None,
        )


class UploadPartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
    bytes: int = Field(description="extra: the part's size as stored")

    @classmethod
    def of(cls, part: UploadPart) -> UploadPartObject:
        return cls(id=part.id, created_at=unix(part.created_at) or 0, upload_id=part.upload_id, bytes=part.bytes)


class FileImport(BaseModel):
    """POST /v1/files as JSON: a file made from an object the service reads itself."""

    url: StorableStr = Field(max_length=MAX_NAME_CHARS, description="s3://bucket/key under IMPORT_ALLOWED_PREFIXES")
    purpose: Literal["batch"] = "batch"
    expires_after: ExpiresAfter | None = None


# POST /v1/files's JSON body as the OpenAPI docs show it, beside the multipart form.
FILE_IMPORT_OPENAPI = {
    "type": "object",
    "title": "FileImport",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "description": "s3://bucket/key under the server's IMPORT_ALLOWED_PREFIXES"},
        "purpose": {"type": "string", "enum": ["batch"], "default": "batch"},
        "expires_after": {
            "type": "object",
            "required": ["anchor", "seconds"],
            "properties": {
                "anchor": {"type": "string", "enum": ["created_at"]},
                "seconds": {"type": "integer", "minimum": 3600, "maximum": 2592000},
            },
        },
    },
}
