"""Upload: stream a file into storage while counting, hashing and checking each line."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from app.core.errors import PayloadTooLarge, ServiceError
from app.core.line_offsets import LineOffsets
from app.core.storage import LineSplitter, ObjectStore, resilient_lines
from app.data.ids import new_id, now
from app.data.json_values import UploadCheck
from app.data.models import FileRecord
from app.data.records import Records
from app.jobs.line_index import IndexWriter, LineIndex
from app.jobs.output_lines import custom_id_of
from app.jobs.retention import expiry, remove_stored
from app.jobs.upload_check import FileCheck

# Lines between the byte offsets an upload records: a shard then reads its input from the
# nearest recorded line before it (a ranged read), so the file is read once over all shards.
LINE_OFFSET_EVERY = 10_000


def line_start(line_offsets: LineOffsets | None, line: int) -> tuple[int, int]:
    """(a line at or before `line`, its first byte) from a file's recorded offsets; (0, 0)
    for a file recorded without them."""
    return line_offsets.start(line) if line_offsets is not None else (0, 0)


def lines_from(
    store: ObjectStore, key: str, line_offsets: LineOffsets | None, line: int, give_up_after_seconds: float = 0.0
) -> Iterator[bytes]:
    """An uploaded file's lines from `line` on, read with a ranged read from the recorded
    line nearest before it; a transient storage failure within `give_up_after_seconds`
    reopens the object and carries on."""
    first, start = line_start(line_offsets, line)
    return itertools.islice(resilient_lines(store, key, give_up_after_seconds, start), line - first, None)


def custom_ids_from(
    store: ObjectStore, index: LineIndex | None, key: str, line_offsets: LineOffsets | None, line: int
) -> Iterator[str]:
    """The custom_ids of a file's lines from `line` on: from its line index, or without one
    (a file uploaded before indexes) its lines stored at `key` read and parsed."""
    if index is not None:
        return index.custom_ids_from(store, line)
    return map(custom_id_of, lines_from(store, key, line_offsets, line))


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_lines: int
    max_errors: int
    max_line_bytes: int | None = None  # None: lines of any length


class CheckingReader:
    """A file object that hashes and checks what passes through it on its way to storage,
    and stops it with PayloadTooLarge past the limits (LineTooLong for one line)."""

    def __init__(self, source: IO[bytes], check: FileCheck | None, limits: UploadLimits | None = None) -> None:
        self._source = source
        self._check = check
        self._limits = limits
        self._lines = LineSplitter(limits.max_line_bytes if limits else None)
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.line_offsets = [0]  # the first byte of lines 0, LINE_OFFSET_EVERY, 2 * LINE_OFFSET_EVERY, ...
        self._lines_seen = 0
        self._next_line_start = 0

    def read(self, size: int = -1) -> bytes:
        data = self._read_fully(size)
        self.bytes += len(data)
        if self._limits is not None and self.bytes > self._limits.max_bytes:
            raise PayloadTooLarge(f"The file is larger than the limit of {self._limits.max_bytes} bytes.")
        self.sha256.update(data)
        if self._check is not None:
            lines = self._lines.feed(data) if data else self._lines.finish()
            self._record_offsets(lines)
            self._check.check_lines(lines)
            if self._limits is not None and self._check.lines > self._limits.max_lines:
                raise PayloadTooLarge(
                    f"The file has more than the limit of {self._limits.max_lines} lines.", code="too_many_lines"
                )
        return data

    def _record_offsets(self, lines: list[bytes]) -> None:
        """Notes where every LINE_OFFSET_EVERY-th line starts; walks the lines only when one does."""
        first, count = self._lines_seen, len(lines)
        mark = len(self.line_offsets) * LINE_OFFSET_EVERY
        if first + count <= mark:
            self._next_line_start += sum(map(len, lines)) + count
        else:
            position = self._next_line_start
            for index, line in enumerate(lines, start=first):
                if index == mark:
                    self.line_offsets.append(position)
                    mark += LINE_OFFSET_EVERY
                position += len(line) + 1
            self._next_line_start = position
        self._lines_seen += count

    def _read_fully(self, size: int) -> bytes:
        """Reads `size` bytes unless the source ends first: boto3 takes a short read for
        the end of the stream, which would store a truncated object."""
        if size is None or size < 0:
            return self._source.read()
        parts, wanted = [], size
        while wanted > 0:
            part = self._source.read(wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)

    def readable(self) -> bool:
        return True


@dataclass(frozen=True)
class StoredUpload:
    """An upload in storage, checked, with no FileRecord yet: the caller may still refuse it."""

    file_id: str
    storage_key: str
    bytes: int
    sha256: str
    line_count: int
    validation: UploadCheck  # empty for a file not checked (not batch input)


def write_upload(store: ObjectStore, source: IO[bytes], *, purpose: str, limits: UploadLimits) -> StoredUpload:
    """Writes the upload to storage; batch input is checked on the way. A refused upload
    (too large, a line too long, a malformed body) leaves nothing behind."""
    file_id = new_id("file-")
    key = f"files/{file_id}"
    check = FileCheck(max_errors=limits.max_errors, index=IndexWriter()) if purpose == "batch" else None
    reader = CheckingReader(source, check, limits)
    try:
        try:
            store.put_stream(key, reader)  # type: ignore[arg-type]
        except ServiceError:
            store.delete(key)  # a multipart upload aborted by the error leaves nothing; a folder may
            raise
        validation = checked_with_index(store, key, reader, check)
    finally:
        if check is not None:
            check.close()
    return StoredUpload(
        file_id=file_id,
        storage_key=key,
        bytes=reader.bytes,
        sha256=reader.sha256.hexdigest(),
        line_count=check.lines if check else 0,
        validation=validation,
    )


def checked_with_index(store: ObjectStore, key: str, reader: CheckingReader, check: FileCheck | None) -> UploadCheck:
    """What the check found (empty for a file not checked), with the file's line offsets, once
    its line index is stored beside `key`; the file goes if the index cannot be stored."""
    if check is None:
        return UploadCheck()
    try:
        validation = check.summary(LineOffsets.of(LINE_OFFSET_EVERY, reader.line_offsets))
        if check.index is None:
            return validation
        custom_ids = check.index.store(store, key)
    except BaseException:
        remove_stored(store, key)
        raise
    return validation.model_copy(update={"custom_ids": custom_ids})


def record_upload(
    records: Records,
    store: ObjectStore,
    stored: StoredUpload,
    *,
    owner: str,
    filename: str,
    purpose: str,
    keep_seconds: int | None = None,
) -> FileRecord:
    """Stores the upload's FileRecord, expiring `keep_seconds` after its creation (None:
    kept until deleted; see app.jobs.retention); the object goes if that fails."""
    created = now()
    record = FileRecord(
        id=stored.file_id,
        owner=owner,
        filename=filename,
        purpose=purpose,
        bytes=stored.bytes,
        sha256=stored.sha256,
        line_count=stored.line_count,
        storage_key=stored.storage_key,
        validation=stored.validation,
        created_at=created,
        expires_at=expiry(created, keep_seconds),
    )
    try:
        return records.add_file(record)
    except Exception:
        remove_stored(store, stored.storage_key)
        raise


def store_upload(
    records: Records,
    store: ObjectStore,
    source: IO[bytes],
    *,
    owner: str,
    filename: str,
    purpose: str,
    limits: UploadLimits,
    keep_seconds: int | None = None,
) -> FileRecord:
    """Writes the upload to storage, then records it; batch input is checked on the way."""
    stored = write_upload(store, source, purpose=purpose, limits=limits)
    return record_upload(
        records, store, stored, owner=owner, filename=filename, purpose=purpose, keep_seconds=keep_seconds
    )
