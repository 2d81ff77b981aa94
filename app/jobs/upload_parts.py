"""Uploads in parts (OpenAI's Uploads API), through the same line check as POST /v1/files.

Each part is streamed to an object of its own, `uploads/<upload>/parts/<part>`, as
it arrives (memory bounded by the store's write buffer, never the part), so parts may come
in parallel and in any order, and one that failed is simply sent again under a new id.
Completion reads the named parts in order through the upload check (`CheckingReader`
over `FileCheck`: a line may span parts; the MD5 is taken on the way), then joins them
into `files/<file>` with the store's `concatenate` (on S3 a server-side copy of each part
of 5 MiB or more: those bytes are read once, for the check, and never uploaded again),
then records the file and ends the upload in one transaction. The upload's parts, named
or not, are removed afterwards, and by the sweeper for uploads that ended otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from app.core.errors import InvalidRequest, PayloadTooLarge
from app.core.storage import CHUNK_BYTES, ChunkReader, ObjectStore
from app.data.ids import new_id, now
from app.data.models import FileRecord, Upload, UploadPart, UploadStatus
from app.data.uploads import Uploads
from app.jobs.line_index import IndexWriter
from app.jobs.retention import expiry, remove_stored
from app.jobs.upload_check import FileCheck
from app.jobs.uploads import CheckingReader, StoredUpload, UploadLimits, checked_with_index

log = logging.getLogger(__name__)


def upload_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/"


def part_key(upload_id: str, part_id: str) -> str:
    return f"{upload_prefix(upload_id)}parts/{part_id}"


class _CountingReader:
    """Passes reads through, counting them; past `max_bytes` it raises PayloadTooLarge, past
    `room` (what the upload's declared size leaves) a 400 naming `bytes`."""

    def __init__(self, source: IO[bytes], max_bytes: int, room: int | None = None) -> None:
        self._source = source
        self._max = max_bytes
        self._room = room
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.bytes += len(data)
        if self.bytes > self._max:
            raise PayloadTooLarge(f"The part is larger than the limit of {self._max} bytes.", param="data")
        if self._room is not None and self.bytes > self._room:
            raise InvalidRequest(
                f"The part takes the upload past its declared `bytes`: it may hold {self._room} more bytes.",
                param="bytes",
                code="upload_too_large",
            )
        return data

    def readable(self) -> bool:
        return True


def part_slack(declared_bytes: int, part_max_bytes: int) -> int:
    """What an upload's parts may hold beyond its declared size: one part's worth (at most the
    whole upload), so a part that failed on the client's side can be sent again."""
    return min(declared_bytes, part_max_bytes)


def write_part(
    store: ObjectStore, uploads: Uploads, upload_id: str, source: IO[bytes], max_bytes: int, room: int, slack: int
) -> UploadPart:
    """Streams one part to its own object and records it. A part refused on the way (past
    `max_bytes`, or past the `room` the upload's declared size leaves), or that finishes after
    its upload ended, leaves nothing stored."""
    part_id = new_id("part_")
    key = part_key(upload_id, part_id)
    reader = _CountingReader(source, max_bytes, room)
    try:
        store.put_stream(key, reader)  # type: ignore[arg-type]
        return uploads.add_part(upload_id, part_id, reader.bytes, slack)
    except BaseException:
        store.delete(key)
        raise


class _Md5Reader(ChunkReader):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__(chunks)
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.md5.update(data)
        return data


def _checked(
    store: ObjectStore, keys: list[str], purpose: str, limits: UploadLimits
) -> tuple[CheckingReader, FileCheck | None, str]:
    """The parts read in order through the upload check; (the reader, with its counts and
    SHA-256, the check, and the MD5 of the bytes)."""
    source = _Md5Reader(chunk for key in keys for chunk in store.read_chunks(key))
    check = FileCheck(max_errors=limits.max_errors, index=IndexWriter()) if purpose == "batch" else None
    reader = CheckingReader(source, check, limits)  # type: ignore[arg-type]
    try:
        while reader.read(CHUNK_BYTES):  # the empty read at the end lets the check finish its last line
            pass
    except BaseException:
        if check is not None:
            check.close()
        raise
    return reader, check, source.md5.hexdigest()


@dataclass(frozen=True)
class Completed:
    upload: Upload
    file: FileRecord | None


def complete_upload(
    uploads: Uploads,
    store: ObjectStore,
    upload: Upload,
    part_ids: list[str],
    md5: str | None,
    limits: UploadLimits,
    keep_seconds: int | None,
) -> Completed:
    """Checks the named parts add up to the upload's bytes, runs the line check over them
    in order, joins them into a file and ends the upload `completed`. A refusal (bytes, MD5,
    a line too long) leaves the upload pending, its parts kept for another try."""
    if upload.status == UploadStatus.COMPLETED:  # a retried completion: the same answer
        return Completed(upload, uploads.file_of(upload))
    uploads.pending(upload.id, None)
    parts = uploads.named_parts(upload.id, part_ids)
    total = sum(part.bytes for part in parts)
    if total != upload.bytes:
        raise InvalidRequest(
            f"The parts named hold {total} bytes; the upload was created for {upload.bytes}.",
            param="part_ids",
            code="bytes_mismatch",
        )
    keys = [part_key(upload.id, part.id) for part in parts]
    reader, check, digest = _checked(store, keys, upload.purpose, limits)
    try:
        if md5 is not None and md5.lower() != digest:
            raise InvalidRequest(f"md5: the parts' MD5 is {digest}, not {md5}.", param="md5", code="md5_mismatch")
        file_id = new_id("file-")
        store.concatenate(f"files/{file_id}", keys)
        stored = _stored(store, file_id, reader, check)
    finally:
        if check is not None:
            check.close()
    created = now()
    record = FileRecord(
        id=stored.file_id,
        owner=upload.owner,
        filename=upload.filename,
        purpose=upload.purpose,
        bytes=stored.bytes,
        sha256=stored.sha256,
        line_count=stored.line_count,
        storage_key=stored.storage_key,
        validation=stored.validation,
        created_at=created,
        expires_at=expiry(created, keep_seconds),
    )
    try:
        ended = uploads.complete(upload.id, record)
    except BaseException:
        remove_stored(store, stored.storage_key)
        raise
    remove_parts(store, uploads, upload.id)
    return Completed(ended, record)


def _stored(store: ObjectStore, file_id: str, reader: CheckingReader, check: FileCheck | None) -> StoredUpload:
    """The joined file, its line index stored beside it."""
    key = f"files/{file_id}"
    validation = checked_with_index(store, key, reader, check)
    return StoredUpload(
        file_id=file_id,
        storage_key=key,
        bytes=reader.bytes,
        sha256=reader.sha256.hexdigest(),
        line_count=check.lines if check else 0,
        validation=validation,
    )


def remove_parts(store: ObjectStore, uploads: Uploads, upload_id: str) -> None:
    """Removes an ended upload's parts now; if storage is away, the sweeper does later."""
    try:
        store.delete_prefix(upload_prefix(upload_id))
        uploads.mark_parts_removed(upload_id)
    except Exception:
        log.warning("could not remove the parts of %s; a sweep retries", upload_id, exc_info=True)


def sweep_uploads(uploads: Uploads, store: ObjectStore) -> list[str]:
    """Expires the pending uploads past their time and removes the parts of ended ones
    (a bounded number per sweep); returns the ids whose parts were removed."""
    for upload_id in uploads.expire_due():
        log.info("upload %s expired", upload_id)

    def remove(upload_id: str) -> bool:
        try:
            store.delete_prefix(upload_prefix(upload_id))
        except Exception:
            log.warning("could not remove the parts of %s; a later sweep retries", upload_id, exc_info=True)
            return False
        return True

    return uploads.remove_ended_parts(remove)
