"""Upload: stream a file into storage while counting, hashing and checking each line."""

from __future__ import annotations

import hashlib
from typing import IO

from app.batch_lines import FileCheck
from app.models import FileRecord
from app.repository import JobRepository, new_id
from app.storage import LineSplitter, ObjectStore


class CheckingReader:
    """A file object that hashes and checks what passes through it on its way to storage."""

    def __init__(self, source: IO[bytes], check: FileCheck | None) -> None:
        self._source = source
        self._check = check
        self._lines = LineSplitter()
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.bytes += len(data)
        self.sha256.update(data)
        if self._check is not None:
            for line in self._lines.feed(data) if data else self._lines.finish():
                self._check.check(line)
        return data

    def readable(self) -> bool:
        return True


def store_upload(
    repo: JobRepository, store: ObjectStore, source: IO[bytes], filename: str, purpose: str, max_errors: int
) -> FileRecord:
    """Writes the upload to storage, then records it; batch input is checked on the way."""
    file_id = new_id("file-")
    key = f"files/{file_id}"
    check = FileCheck(max_errors=max_errors) if purpose == "batch" else None
    reader = CheckingReader(source, check)
    store.put_stream(key, reader)  # type: ignore[arg-type]
    record = FileRecord(
        id=file_id,
        filename=filename,
        purpose=purpose,
        bytes=reader.bytes,
        sha256=reader.sha256.hexdigest(),
        line_count=check.lines if check else 0,
        storage_key=key,
        validation=check.summary() if check else {},
    )
    try:
        return repo.add_file(record)
    except Exception:
        store.delete(key)
        raise
