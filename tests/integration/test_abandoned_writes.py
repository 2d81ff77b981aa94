"""Storage does not leak: a write never finished (its process killed mid-write) is removed
once it is older than any write can last, in a local folder (its dot-file) and on S3 over
HTTP (its incomplete multipart upload, aborted); writes still going are left alone. And
the process-level fault: the API SIGKILLed in the middle of a large upload to S3, started
again, takes the killed upload's parts back by itself and accepts uploads as before."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.core.abandoned_writes import AbandonedWrites
from app.core.database import Database
from app.core.storage import LocalStore, S3Store
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import ROOT, admin_sql, free_port, url_for
from tests.helpers import MIB, completion_line, jsonl, start_slow_upload


def test_a_local_write_left_behind_is_removed_and_one_in_progress_is_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("files/done.jsonl", b"{}\n")
    abandoned = tmp_path / "files" / f".big.jsonl.{uuid.uuid4().hex}.tmp"
    abandoned.write_bytes(b"x" * MIB)
    old = time.time() - 120
    os.utime(abandoned, (old, old))
    in_progress = tmp_path / "files" / f".other.jsonl.{uuid.uuid4().hex}.tmp"
    in_progress.write_bytes(b"y" * 10)

    removed = AbandonedWrites(store).remove(older_than_seconds=60)

    assert (removed.writes, removed.bytes) == (1, MIB)
    assert not abandoned.exists() and in_progress.exists()
    assert list(store.list_keys("files/")) == ["files/done.jsonl"]  # objects are untouched


def test_an_s3_multipart_upload_never_completed_is_aborted(s3_store: S3Store) -> None:
    client, bucket = s3_store.client, s3_store.bucket
    key = s3_store.prefix + "files/big.jsonl"
    started = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=started, PartNumber=1, Body=b"z" * (5 * MIB))
    outside = client.create_multipart_upload(Bucket=bucket, Key="not-ours/x")["UploadId"]  # another prefix

    abandoned_writes = AbandonedWrites(s3_store)
    assert abandoned_writes.remove(older_than_seconds=1).writes == 0  # first seen now: too young yet
    time.sleep(1.1)
    removed = abandoned_writes.remove(older_than_seconds=1)

    assert (removed.writes, removed.bytes) == (1, 5 * MIB)
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [outside]
    client.abort_multipart_upload(Bucket=bucket, Key="not-ours/x", UploadId=outside)


def s3_bytes_in_flight(store: S3Store) -> int:
    """Bytes held by the incomplete multipart uploads under the store's prefix."""
    total = 0
    for upload in store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", []):
        parts = store.client.list_parts(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        total += sum(part["Size"] for part in parts.get("Parts", []))
    return total


def start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the API process exited"
        assert time.monotonic() < deadline, "the API process did not answer"
        time.sleep(0.2)


@pytest.fixture
def database_with_key(template_database: str) -> Iterator[tuple[str, str]]:
    database = f"llmbatch_t_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{database}" TEMPLATE "{template_database}"')
    db = Database(url_for(database))
    _, key = create_key(Records(db), "alice")
    db.dispose()
    yield url_for(database), key
    admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_the_api_killed_mid_upload_to_s3_gives_the_space_back_once_started_again(
    s3_store: S3Store, s3_endpoint: str, database_with_key: tuple[str, str], demo_model: Path
) -> None:
    database_url, key = database_with_key
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"s3://{s3_store.bucket}/{s3_store.prefix}",
        "S3_ENDPOINT_URL": s3_endpoint,
        "MODEL": str(demo_model),
        "PYTHONPATH": str(ROOT),
        "SWEEP_SECONDS": "0.5",
        "TEMPORARY_OBJECT_MAX_AGE_SECONDS": "4",
    }
    api = start_api(env, port)
    try:
        client, sent = start_slow_upload(f"http://127.0.0.1:{port}", key, 400)
        deadline = time.monotonic() + 60
        while s3_bytes_in_flight(s3_store) < 16 * MIB:  # two of its 8 MiB parts are in S3
            assert time.monotonic() < deadline and client.is_alive(), "the upload did not reach S3"
            time.sleep(0.1)
        tokenizing = psutil.Process(api.pid).children(recursive=True)  # the API's tokenizing process
        api.kill()
        api.wait()
        assert tokenizing and not psutil.wait_procs(tokenizing, timeout=15)[1]  # it went with the API
        client.join(timeout=60)
        assert sent[0] < 400 * MIB  # it died mid-upload
        left_behind = s3_bytes_in_flight(s3_store)
        assert left_behind >= 16 * MIB

        api = start_api(env, port)
        deadline = time.monotonic() + 60
        while s3_bytes_in_flight(s3_store):
            assert time.monotonic() < deadline, f"{s3_bytes_in_flight(s3_store)} bytes still held"
            time.sleep(0.5)
        assert not s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads")
        again = httpx.post(
            f"http://127.0.0.1:{port}/v1/files",
            files={"file": ("small.jsonl", jsonl([completion_line("a", "hi")]))},
            data={"purpose": "batch"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert again.status_code == 200, again.text
    finally:
        api.kill()
        api.wait()
