"""The final join (ObjectStore.concatenate) on both stores: the joined object is its parts'
bytes in order; on S3 (moto's server over HTTP) the large parts are copied inside S3
(UploadPartCopy) and never pass through the process; a job's output file is joined so,
its size and line count right."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectNotFound, ObjectStore, S3Store
from app.data.records import Records
from app.jobs.output_lines import part_key
from tests.fakes import FakeEngine
from tests.helpers import both_stores, completion_line, create_batch, jsonl, run_worker_until_idle, upload

MiB = 1 << 20


def blob(tag: int, size: int) -> bytes:
    """`size` bytes that say which part they are, so a part out of place shows."""
    line = f"part {tag:04d}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def put_parts(store: ObjectStore, sizes: list[int]) -> tuple[list[str], bytes]:
    keys, whole = [], []
    for i, size in enumerate(sizes):
        key = f"batches/join/parts/{i:06d}.out.jsonl"
        data = blob(i, size)
        store.put_bytes(key, data)
        keys.append(key)
        whole.append(data)
    return keys, b"".join(whole)


def read(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.read_chunks(key))


class S3Calls:
    """What the store's boto3 client asked of S3 (boto3's event hooks): calls per
    operation, and the bytes of objects read (GetObject) and sent (UploadPart, PutObject)."""

    def __init__(self, store: S3Store) -> None:
        self.calls: Counter[str] = Counter()
        self.bytes_read = 0
        self.bytes_sent = 0
        store.client.meta.events.register("provide-client-params.s3", self._called)
        store.client.meta.events.register("after-call.s3.GetObject", self._after_get)

    def _called(self, model: Any, params: dict[str, Any], **_: Any) -> None:  # the call's own arguments
        self.calls[model.name] += 1
        if model.name in ("UploadPart", "PutObject"):
            self.bytes_sent += len(params["Body"])

    def _after_get(self, parsed: dict[str, Any], **_: Any) -> None:
        self.bytes_read += int(parsed.get("ContentLength", 0))


@both_stores
def test_a_join_of_large_and_small_parts_is_their_bytes_in_order(store: ObjectStore) -> None:
    sizes = [6 * MiB, 4096, 11 * MiB, 1000, 6 * MiB, 6 * MiB + 7, 300]
    keys, expected = put_parts(store, sizes)

    joined = store.concatenate("files/joined", keys)

    assert read(store, "files/joined") == expected
    assert joined.bytes == len(expected)
    assert joined.sha256 == (None if isinstance(store, S3Store) else hashlib.sha256(expected).hexdigest())


@both_stores
def test_a_join_of_many_small_parts_is_their_bytes_in_order(store: ObjectStore) -> None:
    sizes = [1 + (i * 7919) % 20_000 for i in range(100)]  # 1 MB: no part to copy, streamed and hashed
    keys, expected = put_parts(store, sizes)

    joined = store.concatenate("files/joined", keys)

    assert read(store, "files/joined") == expected
    assert joined.bytes == len(expected) and joined.sha256 == hashlib.sha256(expected).hexdigest()


@both_stores
def test_a_join_of_no_parts_is_empty_and_a_missing_part_writes_nothing(store: ObjectStore) -> None:
    assert store.concatenate("files/empty", []).bytes == 0
    assert read(store, "files/empty") == b""

    keys, _ = put_parts(store, [6 * MiB, 10])
    with pytest.raises(ObjectNotFound, match="missing"):
        store.concatenate("files/broken", [keys[0], "batches/join/parts/missing.out.jsonl", keys[1]])
    assert not store.exists("files/broken")


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_s3_copies_the_large_parts_inside_s3_and_reads_only_the_small_ones(store: S3Store) -> None:
    # Many small parts (over one upload's S3_PART_BYTES), then large ones.
    sizes = [200_000] * 48 + [9 * MiB, 6 * MiB, 2000, 7 * MiB, 300]
    keys, expected = put_parts(store, sizes)
    calls = S3Calls(store)

    store.concatenate("files/joined", keys)

    # Read and uploaded: the small parts (9.6 MB: one 8 MiB part, one small part cut in
    # two by it); the first bytes of the 9 MiB part, topping the rest up to a 5 MiB part
    # (the rest of it, 5.4 MB, is copied); the 7 MiB part, whole: after the 2000-byte part,
    # what would be left of it to copy is under 5 MiB.
    small = 200_000 * 48 + 2000 + 300
    top_up = 5 * MiB - (200_000 * 48 - 8 * MiB)
    assert calls.bytes_read == calls.bytes_sent == small + top_up + 7 * MiB
    assert calls.calls["UploadPartCopy"] == 2  # the rest of the 9 MiB part, and the 6 MiB part
    assert calls.calls["GetObject"] == (48 + 1) + 1 + 3 and calls.calls["PutObject"] == 0
    assert calls.calls["ListObjectsV2"] == 1  # the sizes, from one listing instead of a HEAD each
    assert len(expected) - calls.bytes_read == (9 * MiB - top_up) + 6 * MiB  # copied, never read
    assert read(store, "files/joined") == expected


@both_stores
def test_a_jobs_output_file_is_joined_from_its_parts_with_its_size_and_lines(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parts of a few hundred bytes copied like large ones: moto's documented
    # S3_UPLOAD_PART_MIN_SIZE, lowered in its in-process server, and the store's minimum.
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 256)
    monkeypatch.setattr("app.core.s3_join.S3_MIN_PART_BYTES", 256)
    calls = S3Calls(store) if isinstance(store, S3Store) else None
    rows = [completion_line(f"r{i:02d}", f"line {i} " + "x" * 40) for i in range(24)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=4, pack_by_length=False)
    run_worker_until_idle(FakeEngine(), settings, store)

    job = records.get_job(batch["id"])
    assert job.status == "completed" and job.output_file_id is not None
    output = records.get_file(job.output_file_id)
    parts = [read(store, part_key(job.id, w.shard_index, w.seq, "out")) for w in records.windows(job.id)]
    content = read(store, output.storage_key)
    assert len(parts) == 6 and all(len(part) >= 256 for part in parts)
    assert content == b"".join(parts)
    assert client.get(f"/v1/files/{output.id}/content").content == content
    assert output.bytes == len(content) and output.line_count == 24 == content.count(b"\n")
    if calls is not None:
        assert calls.calls["UploadPartCopy"] == 6  # every part copied inside S3
        assert output.sha256 == ""  # nobody read the bytes to hash them
    else:
        assert output.sha256 == hashlib.sha256(content).hexdigest()
