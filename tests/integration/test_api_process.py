"""The API as a real uvicorn process, for what only a real server shows: a hostile
body is refused before it is read, and the process's memory stays flat while 300 MB
stream at it (measured with psutil)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from app.core.database import Database
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import ROOT, admin_sql, free_port, url_for
from tests.helpers import completion_line, jsonl

MIB = 1 << 20
HOSTILE_BYTES = 300 * MIB
MAX_RSS_GROWTH = 50 * MIB


@dataclass(frozen=True)
class ApiProcess:
    url: str
    key: str
    pid: int
    storage: Path

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


@pytest.fixture(scope="module")
def api_process(
    template_database: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    database = f"llmbatch_t_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{database}" TEMPLATE "{template_database}"')
    database_url = url_for(database)
    db = Database(database_url)
    _, key = create_key(Records(db), "alice")
    db.dispose()
    storage = tmp_path_factory.mktemp("api-storage")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"file://{storage}",
        "MODEL": str(demo_model),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                # ready once the start-up load of the model files is done: it grows
                # the process by some hundred MB, which must not land in a test's window
                if httpx.get(f"{url}/readyz", timeout=2).json()["model_files"] == "loaded":
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the API process exited"
            assert time.monotonic() < deadline, "the API process did not answer"
            time.sleep(0.2)
        yield ApiProcess(url, key, process.pid, storage)
    finally:
        process.terminate()
        process.wait(timeout=30)
        admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def megabytes(total: int, pulled: list[int]) -> Iterator[bytes]:
    """`total` bytes of JSON-ish filler, a MiB at a time, counting what the client sent."""
    chunk = b"[" + b"0," * (MIB // 2 - 1) + b"0"
    for _ in range(total // MIB):
        pulled[0] += len(chunk)
        yield chunk


def post_hostile(api: ApiProcess, headers: dict[str, str], *, declared: bool) -> tuple[int | None, int]:
    """Streams 300 MB at POST /v1/batches; (status, or None if the server hung up first; bytes sent)."""
    pulled = [0]
    if declared:
        headers = {**headers, "Content-Length": str(HOSTILE_BYTES)}
    try:
        response = httpx.post(
            f"{api.url}/v1/batches",
            content=megabytes(HOSTILE_BYTES, pulled),
            headers={"content-type": "application/json", **headers},
            timeout=120,
        )
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None, pulled[0]
    return response.status_code, pulled[0]


def raw_response_to_headers_alone(api: ApiProcess, headers: str) -> bytes:
    """Sends only a request's head (a 300 MB body announced, none sent) and reads the answer."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            "POST /v1/batches HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Content-Length: {HOSTILE_BYTES}\r\n{headers}\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            received = sock.recv(65536)
            if not received:
                break
            answer += received
        return answer


def test_an_unauthenticated_300_mb_body_is_refused_with_401_before_it_is_read(api_process: ApiProcess) -> None:
    answer = raw_response_to_headers_alone(api_process, "")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code":"invalid_api_key"' in answer


def test_a_known_caller_announcing_a_body_over_the_cap_gets_413_before_it_is_read(api_process: ApiProcess) -> None:
    answer = raw_response_to_headers_alone(api_process, f"Authorization: Bearer {api_process.key}\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"request_too_large"' in answer


def test_300_mb_streamed_without_a_key_or_over_the_cap_leave_the_api_process_memory_flat(
    api_process: ApiProcess,
) -> None:
    auth = {"Authorization": f"Bearer {api_process.key}"}
    assert httpx.get(f"{api_process.url}/v1/batches", headers=auth).status_code == 200  # warm up
    before = api_process.rss()
    cases = [({}, True, 401), ({}, False, 401), (auth, True, 413), (auth, False, 413)]
    for headers, declared, status in cases:
        answered, sent = post_hostile(api_process, headers, declared=declared)
        assert answered in (status, None)  # or the server hung up on the rest of the body
        assert answered is not None or sent < HOSTILE_BYTES
        grown = api_process.rss() - before
        assert grown < MAX_RSS_GROWTH, f"RSS grew {grown / MIB:.0f} MB ({headers.keys()}, declared={declared})"
    assert httpx.get(f"{api_process.url}/v1/batches", headers=auth).status_code == 200  # still serving


def test_an_upload_reaches_storage_while_it_streams_and_memory_stays_flat(api_process: ApiProcess) -> None:
    """No spooling: the object is being written before the client has sent the file's end."""
    line = jsonl([completion_line("r", "x" * (64 << 10))])
    lines_per_chunk = MIB // len(line)
    chunk = b"".join(line.replace(b'"r"', f'"r{i}"'.encode(), 1) for i in range(lines_per_chunk))
    boundary = "streamboundary"
    seen_while_streaming: list[int] = []

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        for index in range(200):
            yield chunk.replace(b'"r', f'"c{index}-'.encode())
            if index == 20:  # 20 MB sent: the server must already be writing them
                deadline = time.monotonic() + 10
                while not seen_while_streaming and time.monotonic() < deadline:
                    partial = [p.stat().st_size for p in api_process.storage.rglob("*.tmp")]
                    if partial and max(partial) > 0:
                        seen_while_streaming.append(max(partial))
                    time.sleep(0.05)
        purpose = 'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch'
        yield f"\r\n--{boundary}\r\n{purpose}\r\n--{boundary}--\r\n".encode()

    before = api_process.rss()
    response = httpx.post(
        f"{api_process.url}/v1/files",
        content=body(),
        headers={
            "Authorization": f"Bearer {api_process.key}",
            "content-type": f"multipart/form-data; boundary={boundary}",
        },
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert response.json()["lines"] == 200 * lines_per_chunk
    assert seen_while_streaming, "nothing reached storage before the upload ended: the body was spooled"
    grown = api_process.rss() - before
    assert grown < MAX_RSS_GROWTH, f"RSS grew {grown / MIB:.0f} MB during a 200 MB upload"


def test_a_client_that_hangs_up_mid_upload_leaves_nothing_behind(api_process: ApiProcess) -> None:
    auth = {"Authorization": f"Bearer {api_process.key}"}
    files_before = httpx.get(f"{api_process.url}/v1/files", headers=auth).json()["data"]
    boundary = "hangupboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.jsonl"\r\n\r\n'
    ).encode() + jsonl([completion_line("r", "x" * 1000)]) * 8000  # about 8 MB of a longer file
    host, port = api_process.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {api_process.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {100 * MIB}\r\n\r\n"
        )
        sock.sendall(head.encode() + part)
        deadline = time.monotonic() + 10
        while not list(api_process.storage.rglob("*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(api_process.storage.rglob("*.tmp")), "the upload never reached storage"
    deadline = time.monotonic() + 10
    while list(api_process.storage.rglob("*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(api_process.storage.rglob("*.tmp")) == []
    assert httpx.get(f"{api_process.url}/v1/files", headers=auth).json()["data"] == files_before


def test_slow_uploads_cannot_take_the_threads_other_requests_run_on(api_process: ApiProcess) -> None:
    """45 uploads that stall mid-file (more than the 40 threads FastAPI runs `def`
    routes on) leave the API answering everything else."""
    boundary = "slowboundary"
    host, port = api_process.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {api_process.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {10 * MIB}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n\r\n'
    ).encode() + jsonl([completion_line("r", "x")])
    stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(45)]
    try:
        for sock in stalled:
            sock.sendall(head)
        time.sleep(1)  # every upload is now waiting for more of its file
        started = time.monotonic()
        response = httpx.get(f"{api_process.url}/v1/batches", headers={"Authorization": f"Bearer {api_process.key}"})
        assert response.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()
