"""Writes that were never finished: what a process killed mid-write leaves in storage.

Every write goes to a temporary place first and becomes an object only when it is
complete: in a local folder a dot-named twin (`.name.<uuid>.tmp`) renamed into place, on
S3 a multipart upload completed at the end. A process killed in the middle (an API
SIGKILLed mid-upload, a worker mid-part) leaves that temporary place behind, holding
space forever. The sweeper removes the ones older than any write can last
(`TEMPORARY_OBJECT_MAX_AGE_SECONDS`).

On S3 it aborts the incomplete multipart uploads under the service's prefix
(`AbortMultipartUpload`) it has seen pending for longer than that. It counts from when it
first saw an upload, not from the upload's `Initiated` time: S3 stand-ins do not all keep
that one (moto answers a fixed date in 2010), and this clock needs no agreement with the
store's; a restarted API only starts counting again. It aborts uploads rather than setting
a lifecycle rule at start-up: a rule counts in whole days, needs rights on the bucket's
configuration the service may not have (a shared bucket), and is not kept by every S3
stand-in; a sweep needs only the rights the service already uses, on AWS, MinIO and moto.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
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


@dataclass
class AbandonedWrites:
    """Finds and removes a store's abandoned writes; keeps when it first saw each pending
    S3 multipart upload."""

    store: ObjectStore
    _first_seen: dict[str, float] = field(default_factory=dict)

    def remove(self, older_than_seconds: float) -> Removed:
        """Removes the writes unfinished and untouched for more than `older_than_seconds`."""
        if isinstance(self.store, LocalStore):
            return _local(self.store.root, older_than_seconds)
        if isinstance(self.store, S3Store):
            return self._s3(self.store, older_than_seconds)
        return Removed(0, 0)

    def _s3(self, store: S3Store, older_than_seconds: float) -> Removed:
        client, bucket, now = store.client, store.bucket, time.monotonic()
        writes = size = 0
        pending: set[str] = set()
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=store.prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                pending.add(upload_id)
                if now - self._first_seen.setdefault(upload_id, now) <= older_than_seconds:
                    continue
                try:
                    parts = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except client.exceptions.NoSuchUpload:  # completed or aborted meanwhile
                    continue
                writes, size = writes + 1, size + sum(int(part["Size"]) for part in parts)
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in pending}
        return Removed(writes, size)


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
