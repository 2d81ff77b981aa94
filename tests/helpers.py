"""Small builders for test data and the API calls every test makes."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from worker.engine import Engine
from worker.loop import WorkerLoop

MIB = 1 << 20

# Where storage matters (uploads, parts, the final join, downloads), a test runs on both
# backends: a local folder and S3 over HTTP (moto). Elsewhere the `store` is local.
both_stores = pytest.mark.parametrize("store", ["local", "s3"], indirect=True)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def completion_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": messages, **body},
    }


def upload(client: TestClient, data: bytes, filename: str = "input.jsonl") -> dict[str, Any]:
    response = client.post("/v1/files", files={"file": (filename, data)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def create_batch(client: TestClient, file_id: str, endpoint: str = "/v1/completions", **extra: Any) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_for_status(client: TestClient, batch_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """Polls a batch until it shows `status` (the API's sweeper or a worker moves it)."""
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] == status or time.monotonic() > deadline:
            assert batch["status"] == status, batch
            return batch
        time.sleep(0.05)


def wait_for_estimate(client: TestClient, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    """A queued batch's estimate, counted on the API's heavy-work threads after creation."""
    deadline = time.monotonic() + timeout
    while True:
        estimate: dict[str, Any] | None = client.get(f"/v1/batches/{batch_id}").json()["estimate"]
        if estimate is not None:
            return estimate
        assert time.monotonic() < deadline, "no estimate"
        time.sleep(0.05)


def download(client: TestClient, file_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return read_jsonl(response.content)


def run_worker_until_idle(
    engine: Engine, settings: Settings, store: ObjectStore, max_shards: int | None = None
) -> WorkerLoop:
    """A worker in this process runs shards until none is left (or `max_shards` ran)."""
    db = Database(settings.database_url or "")
    loop = WorkerLoop(engine, Records(db), JobQueue(db), store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    if max_shards is None:
        while loop.run_once():
            pass
    else:  # exactly `max_shards` shards, each claimed and run alone (a worker would claim more beside it)
        for _ in range(max_shards):
            shard = loop.queue.claim_shard(loop.worker_id, engine.model_name, loop.lease_seconds)
            if shard is None:
                break
            loop.run_alone(loop.prepared(shard))
    db.dispose()
    return loop


def slow_upload_body(boundary: str, megabytes: int, sent: list[int]) -> Iterator[bytes]:
    """A multipart upload of valid JSONL lines at about 40 MB/s, counting what was sent."""
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'.encode()
    head = 'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\nContent-Type: application/jsonl'
    yield f"--{boundary}\r\n{head}\r\n\r\n".encode()
    line = jsonl([completion_line("r", "x" * 200)])
    block = line * (MIB // len(line))
    for _ in range(megabytes):
        sent[0] += len(block)
        yield block
        time.sleep(0.025)
    yield f"\r\n--{boundary}--\r\n".encode()


def start_slow_upload(base_url: str, api_key: str, megabytes: int) -> tuple[threading.Thread, list[int]]:
    """`slow_upload_body` posted to /v1/files on a thread; the thread and the bytes sent so far.
    An upload the server dies under just ends."""
    boundary, sent = uuid.uuid4().hex, [0]
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError):
            body = slow_upload_body(boundary, megabytes, sent)
            httpx.post(f"{base_url}/v1/files", content=body, headers=headers, timeout=120)

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    return thread, sent
