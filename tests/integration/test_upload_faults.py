"""A SIGKILLed API in the middle of an Upload's part loses only that part: the parts it
had recorded stay, the client sends the lost one again to the restarted API (a new part
id) and the upload completes with exactly its bytes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from app.core.storage import S3Store
from tests.conftest import ROOT, free_port
from tests.helpers import MIB, completion_line, jsonl
from tests.integration.test_abandoned_writes import database_with_key, s3_bytes_in_flight, start_api

__all__ = ["database_with_key"]  # the fixture, used by name


def slow_part(url: str, key: str, sent: list[int]) -> threading.Thread:
    """A 40 MiB part posted a MiB at a time; it just ends when the server dies under it."""
    boundary = "partboundary"

    def body() -> Iterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="blob"\r\n\r\n'.encode()
        for _ in range(40):
            sent[0] += MIB
            yield b"z" * MIB
            time.sleep(0.1)
        yield f"\r\n--{boundary}--\r\n".encode()

    def post() -> None:
        try:
            headers = {"Authorization": f"Bearer {key}", "content-type": f"multipart/form-data; boundary={boundary}"}
            httpx.post(url, content=body(), headers=headers, timeout=60)
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_a_killed_api_loses_only_the_part_in_flight(
    s3_store: S3Store, s3_endpoint: str, database_with_key: tuple[str, str], demo_model: Path
) -> None:
    database_url, key = database_with_key
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"s3://{s3_store.bucket}/{s3_store.prefix}",
        "S3_ENDPOINT_URL": s3_endpoint,
        "MODEL": str(demo_model),
        "PYTHONPATH": str(ROOT),
    }
    # About 24 MB: the part in flight (up to 40 MiB, killed once 8 MiB are in S3) fits in
    # what the upload's declared size leaves for it (its bytes plus one part's slack).
    data = jsonl([completion_line(f"r{i}", f"prompt {i} " + "x" * 1100) for i in range(20_000)])
    first, second = data[: len(data) // 2], data[len(data) // 2 :]
    auth = {"Authorization": f"Bearer {key}"}
    api = start_api(env, port)
    try:
        upload = httpx.post(
            f"{base}/uploads",
            json={"bytes": len(data), "filename": "f.jsonl", "purpose": "batch", "mime_type": "application/jsonl"},
            headers=auth,
        ).json()
        kept = httpx.post(f"{base}/uploads/{upload['id']}/parts", files={"data": first}, headers=auth).json()["id"]
        sent = [0]
        client = slow_part(f"{base}/uploads/{upload['id']}/parts", key, sent)
        deadline = time.monotonic() + 60
        while s3_bytes_in_flight(s3_store) < 8 * MIB:  # the part in flight is in S3, unfinished
            assert time.monotonic() < deadline and client.is_alive(), "the part did not reach S3"
            time.sleep(0.1)
        api.kill()
        api.wait()
        client.join(timeout=60)
        assert sent[0] < 40 * MIB

        api = start_api(env, port)
        again = httpx.post(f"{base}/uploads/{upload['id']}/parts", files={"data": second}, headers=auth)
        assert again.status_code == 200, again.text
        done = httpx.post(
            f"{base}/uploads/{upload['id']}/complete", json={"part_ids": [kept, again.json()["id"]]}, headers=auth
        )
        assert done.status_code == 200, done.text
        file = done.json()["file"]
        assert (file["bytes"], file["lines"]) == (len(data), 20_000)
        assert httpx.get(f"{base}/files/{file['id']}/content", headers=auth).content == data
    finally:
        api.kill()
        api.wait()
