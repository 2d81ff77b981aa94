"""Joining S3 objects into one inside S3: a multipart upload whose parts are server-side
copies (UploadPartCopy) of the source objects wherever S3's part sizes allow it.

S3's rules: every part but the last is at least 5 MiB, none is over 5 GiB, at most
10,000 parts. A source object of 5 MiB or more is copied (split in equal ranges if it
is over 5 GiB); a run of smaller ones is read and uploaded as parts of S3_PART_BYTES.
A run that ends below 5 MiB before a large object is topped up with that object's
first bytes (a ranged read) and the rest of it is still copied; when that rest would be
under 5 MiB too, the whole object is read. So only the small objects pass through the
process, plus under 5 MiB per run of them, and memory holds one uploaded part at most.

Why not copy only when every part but the last is 5 MiB or more, and stream otherwise:
a job's parts are its windows' results, and every shard's last window is usually short,
so one short part anywhere would stream the whole output. Here it costs its own bytes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

S3_MIN_PART_BYTES = 5 << 20  # every part but the last
S3_MAX_PART_BYTES = 5 << 30
S3_MAX_PARTS = 10_000
COPY_CONCURRENCY = 4


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of one source object."""

    key: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Copy:
    """A part copied inside S3 from one object's range."""

    piece: Piece


@dataclass(frozen=True)
class Upload:
    """A part read from the sources' ranges, in order, and uploaded."""

    pieces: tuple[Piece, ...]


Part = Copy | Upload


def plan_parts(sizes: Sequence[tuple[str, int]], *, upload_bytes: int) -> list[Part]:
    """The parts of the concatenation of `sizes`' objects (key, bytes), in order; uploaded
    parts are `upload_bytes` long unless a copy or the end cuts them short."""
    minimum, maximum = S3_MIN_PART_BYTES, S3_MAX_PART_BYTES
    upload_bytes = max(upload_bytes, minimum)
    parts: list[Part] = []
    pending: list[Piece] = []
    waiting = 0  # bytes in `pending`

    def flush() -> None:
        nonlocal waiting
        if pending:
            parts.append(Upload(tuple(pending)))
            pending.clear()
            waiting = 0

    def read(piece: Piece) -> None:  # into uploaded parts of exactly upload_bytes
        nonlocal waiting
        while piece.size:
            take = min(piece.size, upload_bytes - waiting)
            pending.append(Piece(piece.key, piece.start, piece.start + take))
            waiting += take
            piece = Piece(piece.key, piece.start + take, piece.end)
            if waiting >= upload_bytes:
                flush()

    for key, size in sizes:
        start = 0
        if size < minimum:
            read(Piece(key, 0, size))
            continue
        if 0 < waiting < minimum:  # the run before it is too short to be a part by itself
            top_up = minimum - waiting
            if size - top_up < minimum:
                read(Piece(key, 0, size))
                continue
            read(Piece(key, 0, top_up))
            start = top_up
        flush()
        count = -(-(size - start) // maximum)  # equal ranges: each at least half the maximum
        bounds = [start + (size - start) * i // count for i in range(count + 1)]
        parts += [Copy(Piece(key, a, b)) for a, b in itertools.pairwise(bounds)]
    flush()
    return parts


def object_sizes(client: Any, bucket: str, keys: Sequence[str]) -> list[int]:
    """The sizes of `keys` (full S3 keys) from one listing of the range they span (S3's
    listings are consistent with its writes): a request per thousand objects where a
    HEAD each would be a request per object. A key not listed raises KeyError."""
    first, last = min(keys), max(keys)
    shared = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
    wanted, found = set(keys), {}
    # The keys from `first` to `last`: their shared prefix, starting just before `first`.
    listing = client.get_paginator("list_objects_v2")
    pages = listing.paginate(Bucket=bucket, Prefix=first[:shared], StartAfter=first[:-1])
    for item in _listed(pages):
        if item["Key"] > last:
            break
        if item["Key"] in wanted:
            found[item["Key"]] = int(item["Size"])
    if missing := [key for key in keys if key not in found]:
        raise KeyError(missing[0])
    return [found[key] for key in keys]


def _listed(pages: Any) -> Iterator[dict[str, Any]]:
    for page in pages:
        yield from page.get("Contents", [])


def multipart_join(client: Any, bucket: str, key: str, parts: Sequence[Part]) -> None:
    """Writes `parts` as one multipart upload to `key`; copies run on a few threads while
    uploads are read (ranged GETs) and sent in turn. On any failure the upload is aborted
    (S3 keeps, and bills, an incomplete upload's parts otherwise)."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    target = {"Bucket": bucket, "Key": key, "UploadId": upload_id}

    def read(piece: Piece) -> bytes:
        ranged = f"bytes={piece.start}-{piece.end - 1}"
        data: bytes = client.get_object(Bucket=bucket, Key=piece.key, Range=ranged)["Body"].read()
        return data

    def copy(number: int, piece: Piece) -> str:
        result = client.upload_part_copy(
            **target,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": piece.key},
            CopySourceRange=f"bytes={piece.start}-{piece.end - 1}",
        )
        return str(result["CopyPartResult"]["ETag"])

    try:
        with ThreadPoolExecutor(COPY_CONCURRENCY, thread_name_prefix="s3-copy") as pool:
            etags: list[Future[str] | str] = []
            for number, part in enumerate(parts, start=1):
                if isinstance(part, Copy):
                    etags.append(pool.submit(copy, number, part.piece))
                else:
                    body = b"".join(read(piece) for piece in part.pieces)
                    etags.append(client.upload_part(**target, PartNumber=number, Body=body)["ETag"])
            done = [etag if isinstance(etag, str) else etag.result() for etag in etags]
        client.complete_multipart_upload(
            **target, MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(done, start=1)]}
        )
    except BaseException:
        try:
            client.abort_multipart_upload(**target)
        except Exception:  # the failure that got here is the one to report
            log.warning("could not abort the multipart upload of %s", key, exc_info=True)
        raise
