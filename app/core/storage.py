"""Object storage behind one small interface: a local folder or S3 (boto3).

Both stream: writes take an iterable of chunks or a file object, reads yield
chunks, so no object passes whole through memory. Both join objects into one
(`concatenate`, the final join of a job's output): a folder copies files; S3 copies
inside S3 where part sizes allow (app.core.s3_join), so those bytes never pass through.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from app.core import s3_join
from app.core.errors import LineTooLong

CHUNK_BYTES = 1 << 20
S3_PART_BYTES = 8 << 20
S3_WRITE_CONCURRENCY = 2  # parts of one write in flight (and in memory) at once: 16 MiB a stream


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class Joined:
    """What `concatenate` wrote: its size, and the SHA-256 (hex) of its bytes when they
    passed through this process (None when S3 copied them inside S3: nobody read them)."""

    bytes: int
    sha256: str | None


class ObjectStore(Protocol):
    def put_stream(self, key: str, source: IO[bytes]) -> None:
        """Writes everything `source.read()` yields; the object appears only when complete."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None: ...

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        """Yields the object in chunks from byte `start` on; raises ObjectNotFound if it is missing."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """The keys of the objects whose key starts with `prefix`."""

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object whose key starts with `prefix`; returns how many."""

    def concatenate(self, key: str, part_keys: Sequence[str]) -> Joined:
        """Writes the part objects' bytes, in the order given, as `key` (empty without
        parts); raises ObjectNotFound for a missing part, writing nothing."""


S3_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


class ChunkReader:
    """A read-only file object over an iterable of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readable(self) -> bool:
        return True


class HashingReader(ChunkReader):
    """A ChunkReader that counts and hashes what is read from it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__(chunks)
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data


def put_hashed(store: ObjectStore, key: str, chunks: Iterable[bytes]) -> Joined:
    """Streams `chunks` to `key`, hashing them on the way."""
    reader = HashingReader(chunks)
    store.put_stream(key, reader)  # type: ignore[arg-type]
    return Joined(reader.bytes, reader.sha256.hexdigest())


class LocalStore:
    """A folder; writes go to a temporary name and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    def put_stream(self, key: str, source: IO[bytes]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        self.put_stream(key, ChunkReader(chunks))  # type: ignore[arg-type]

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_chunks(key, [data])

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115  (closed by _iter_file)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        handle.seek(start)
        return _iter_file(handle)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> Iterator[str]:
        root = self.root.resolve()
        # The deepest folder every matching key is under; a written object's temporary
        # twin (a dot name) is not an object yet.
        folder = self._path(prefix) if prefix.endswith("/") or not prefix else self._path(prefix).parent
        if not folder.is_dir():
            return
        for dirpath, _, names in os.walk(folder):
            for name in sorted(names):
                if name.startswith("."):
                    continue
                key = (Path(dirpath) / name).relative_to(root).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        for key in list(self.list_keys(prefix)):
            self.delete(key)
            deleted += 1
        if prefix.endswith("/") and prefix.strip("/"):
            shutil.rmtree(self._path(prefix), ignore_errors=True)  # the emptied folders
        return deleted

    def concatenate(self, key: str, part_keys: Sequence[str]) -> Joined:
        """Copies the files in turn into the new one (renamed into place when complete),
        hashing them on the way."""
        return put_hashed(self, key, (chunk for k in part_keys for chunk in self.read_chunks(k)))


def _iter_file(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


class S3Store:
    """An S3 bucket (AWS, MinIO, moto) under a key prefix; large writes are multipart."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str = "us-east-1"):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 10, "mode": "standard"}),
        )
        self._transfer = TransferConfig(multipart_chunksize=S3_PART_BYTES, max_concurrency=S3_WRITE_CONCURRENCY)
        # A stream (an upload, a part) buffers only the parts in flight, not boto3's default 10.
        self._transfer.max_in_memory_upload_chunks = S3_WRITE_CONCURRENCY

    def _key(self, key: str) -> str:
        return self.prefix + key

    def ensure_bucket(self) -> None:
        """Creates the bucket if it is missing (handy for MinIO and moto)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self.client.exceptions.ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_stream(self, key: str, source: IO[bytes]) -> None:
        self.client.upload_fileobj(source, self.bucket, self._key(key), Config=self._transfer)

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        self.put_stream(key, ChunkReader(chunks))  # type: ignore[arg-type]

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        ranged = {"Range": f"bytes={start}-"} if start else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(key) from None
        return iter(response["Body"].iter_chunks(CHUNK_BYTES))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def concatenate(self, key: str, part_keys: Sequence[str]) -> Joined:
        """A multipart upload of server-side copies (UploadPartCopy) of every part of
        5 MiB or more, the smaller ones read and uploaded in parts of S3_PART_BYTES; see
        app.core.s3_join for how S3's part sizes are met. The size is the sum of the
        parts' listed sizes; the SHA-256 is None, since the copied bytes are never read
        here. With no part large enough to copy (or over S3's 10,000 parts) it streams
        the parts instead, as the other writes do, and hashes them."""
        full = [self._key(k) for k in part_keys]
        try:
            sizes = s3_join.object_sizes(self.client, self.bucket, full) if full else []
        except KeyError as exc:
            raise ObjectNotFound(exc.args[0][len(self.prefix) :]) from None
        parts = s3_join.plan_parts(list(zip(full, sizes, strict=True)), upload_bytes=S3_PART_BYTES)
        if not any(isinstance(p, s3_join.Copy) for p in parts) or len(parts) > s3_join.S3_MAX_PARTS:
            return put_hashed(self, key, (chunk for k in part_keys for chunk in self.read_chunks(k)))
        s3_join.multipart_join(self.client, self.bucket, self._key(key), parts)
        return Joined(sum(sizes), None)

    def list_keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]

    def delete_prefix(self, prefix: str) -> int:
        """Lists and deletes in batches of S3_DELETE_BATCH keys; a key it could not delete raises."""
        deleted = 0
        batch: list[str] = []
        for key in self.list_keys(prefix):
            batch.append(key)
            if len(batch) == S3_DELETE_BATCH:
                deleted += self._delete_keys(batch)
                batch = []
        if batch:
            deleted += self._delete_keys(batch)
        return deleted

    def _delete_keys(self, keys: list[str]) -> int:
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in keys], "Quiet": True}
        )
        if errors := response.get("Errors"):
            first = errors[0]
            where = f"{first.get('Key')}: {first.get('Message')}"
            raise OSError(f"S3 could not delete {len(errors)} objects, the first {where}")
        return len(keys)


def open_store(url: str, s3_endpoint_url: str | None = None, region: str = "us-east-1") -> ObjectStore:
    """`file:///path` or `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        store = S3Store(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url, region=region)
        store.ensure_bucket()
        return store
    raise ValueError(f"storage URL must be file:// or s3://, not {url!r}")


class LineSplitter:
    """Cuts a chunk stream into lines (without their newline); a last line without one counts.

    A line that spans chunks is kept as its pieces and joined once, when its newline
    comes, so a long line costs time linear in its size. With `max_line_bytes`, a longer
    line raises LineTooLong (counted from 1) as soon as it grows past the limit, so an
    endless line cannot hold memory."""

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.lines = 0  # lines handed out so far
        self._pieces: list[bytes] = []  # the partial line, as it came
        self._partial_bytes = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if chunk:
                self._pieces.append(chunk)
                self._partial_bytes += len(chunk)
                self._check_partial()
            return []
        first, *complete, rest = chunk.split(b"\n")
        if self._pieces:
            self._pieces.append(first)
            first = b"".join(self._pieces)
        complete.insert(0, first)
        self._pieces = [rest] if rest else []
        self._partial_bytes = len(rest)
        if self.max_line_bytes is not None and max(map(len, complete)) > self.max_line_bytes:
            too_long = next(i for i, line in enumerate(complete) if len(line) > self.max_line_bytes)
            raise LineTooLong(self.lines + too_long + 1, self.max_line_bytes)
        self.lines += len(complete)
        self._check_partial()
        return complete

    def finish(self) -> list[bytes]:
        rest = b"".join(self._pieces)
        self._pieces, self._partial_bytes = [], 0
        if not rest:
            return []
        self.lines += 1
        return [rest]

    def _check_partial(self) -> None:
        if self.max_line_bytes is not None and self._partial_bytes > self.max_line_bytes:
            raise LineTooLong(self.lines + 1, self.max_line_bytes)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.finish()


def read_lines(store: ObjectStore, key: str) -> Iterator[bytes]:
    """The object's lines (without their newline), streamed."""
    return iter_lines(store.read_chunks(key))


def resilient_lines(store: ObjectStore, key: str, give_up_after_seconds: float, start: int = 0) -> Iterator[bytes]:
    """The object's lines from byte `start` (a line's first byte) on; a transient storage
    failure mid-read reopens the object there and carries on after the last line handed out."""
    from app.core.backoff import Backoff, is_transient

    handed_out = 0
    backoff = Backoff()
    deadline = time.monotonic() + give_up_after_seconds
    while True:
        try:
            for index, line in enumerate(iter_lines(store.read_chunks(key, start))):
                if index >= handed_out:
                    handed_out += 1
                    deadline = time.monotonic() + give_up_after_seconds
                    backoff.reset()
                    yield line
            return
        except Exception as exc:
            wait = backoff.next()
            if not is_transient(exc) or time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)
