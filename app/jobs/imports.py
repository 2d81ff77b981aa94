"""Imports: a file made from an object already in S3 (POST /v1/files with a JSON `url`),
read with the service's own credentials under the prefixes an admin allows
(IMPORT_ALLOWED_PREFIXES, app.core.s3_source), streamed through the same upload check as
POST /v1/files into storage by this process: the client sends nothing but the URL."""

from __future__ import annotations

from app.core.errors import PayloadTooLarge, ServiceError
from app.core.s3_source import S3Url, open_source
from app.core.storage import ChunkReader, ObjectStore
from app.data.models import FileRecord
from app.data.records import Records
from app.jobs.uploads import UploadLimits, record_upload, write_upload


def import_object(
    records: Records,
    store: ObjectStore,
    source: S3Url,
    *,
    owner: str,
    endpoint_url: str | None,
    region: str,
    limits: UploadLimits,
    keep_seconds: int | None,
) -> FileRecord:
    """The file made from `source`; a refusal on the way (too large, a line too long) names
    `url` and leaves nothing stored."""
    opened = open_source(source, endpoint_url, region)
    if opened.size > limits.max_bytes:
        raise PayloadTooLarge(f"{source} is larger than the limit of {limits.max_bytes} bytes.", param="url")
    try:
        stored = write_upload(store, ChunkReader(opened.chunks), purpose="batch", limits=limits)  # type: ignore[arg-type]
    except ServiceError as exc:
        exc.param = "url" if exc.param in (None, "file") else exc.param
        raise
    filename = source.key.rsplit("/", 1)[-1]
    return record_upload(
        records, store, stored, owner=owner, filename=filename, purpose="batch", keep_seconds=keep_seconds
    )
