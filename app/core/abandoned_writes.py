"""Writes that were never finished: what a process killed mid-write leaves in storage.

Every write goes to a temporary place first and becomes an object only when it is
complete: in a local folder a dot-named twin (`.name.<uuid>.tmp`) renamed into place, on
S3 a multipart upload completed at the end. A process killed in the middle (an API
SIGKILLed mid-upload, a worker mid-part) leaves that temporary place behind, holding
space forever. The sweeper removes the ones older than any write can last
(`TEMPORARY_OBJECT_MAX_AGE_SECONDS`).

On S3 it aborts the incomplete multipart uploads under the service's prefix
(`AbortMultipartUpload`), rather than setting a lifecycle rule at start-up: a rule counts
in whole days, needs rights on the bucket's configuration the service may not have (a
shared bucket), and is not kept by every S3 stand-in; a sweep needs only the rights the
service already uses, and works the same on AWS, MinIO and moto.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.core.storage import LocalStore, ObjectStore, S3Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    writes: int  # temporary files, or multipart uploads aborted
    bytes: int


def is_temporary_name(name: str) -> bool:
    """A local write in progress (LocalStore.put_stream's dot-named twin)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_abandoned_writes(store: ObjectStore, older_than_seconds: float) -> Removed:
    """Removes the writes begun more than `older_than_seconds` ago and never finished."""
    if isinstance(store, LocalStore):
        return _local(store.root, older_than_seconds)
    if isinstance(store, S3Store):
        return _s3(store, older_than_seconds)
    return Removed(0, 0)


def _local(root: Path, older_than_seconds: float) -> Removed:
    cutoff = time.time() - older_than_seconds
    writes = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not is_temporary_name(name):
                continue
            path = Path(dirpath) / name
            try:
                stat = path.stat()
                if stat.st_mtime < cutoff:  # a write still going touches its file with every chunk
                    path.unlink()
                    writes, size = writes + 1, size + stat.st_size
            except FileNotFoundError:  # renamed into place, or removed, meanwhile
                continue
    return Removed(writes, size)


def _s3(store: S3Store, older_than_seconds: float) -> Removed:
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
    client, bucket = store.client, store.bucket
    writes = size = 0
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=store.prefix)
    for page in pages:
        for upload in page.get("Uploads", []):
            if upload["Initiated"] >= cutoff:
                continue
            key, upload_id = upload["Key"], upload["UploadId"]
            try:
                parts = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except client.exceptions.NoSuchUpload:  # completed or aborted meanwhile
                continue
            writes, size = writes + 1, size + sum(int(part["Size"]) for part in parts)
    return Removed(writes, size)
