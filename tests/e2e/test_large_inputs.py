"""Big inputs the way clients send them, through the official openai SDK against the API
and a worker as processes, with S3 over HTTP (moto's server): a 300 MB file sent as 64 MB
parts in parallel and out of order, completed, run as a batch whose output matches the
same prompts imported from an allowed s3:// prefix, with the API's memory flat; an import
outside the prefixes refused; an expired upload's parts gone after the API's own sweep.

The 300 MB are 330 lines of about 950 KB each, a short prompt and the rest in the body's
`user` field (accepted, never tokenized), so the batch over them runs in seconds on a CPU
engine while every byte still goes through the parts, the line check and the worker.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from openai import BadRequestError, OpenAI

from app.core.storage import S3Store
from app.tools.launcher import MALLOC_SETTINGS
from tests.e2e.conftest import Service
from tests.helpers import MIB, completion_line, jsonl, read_jsonl

pytestmark = pytest.mark.engine
TOTAL_BYTES = 300 * MIB
PART_BYTES = 64 * MIB
LINES = 330
MAX_RSS_GROWTH = 100 * MIB
SOURCE_PREFIX = "imports/"


@pytest.fixture
def s3_service(
    service_env: dict[str, str], s3_store: S3Store, s3_endpoint: str, request: pytest.FixtureRequest
) -> Iterator[Service]:
    source = f"source-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=source)
    env = {
        **service_env,
        "STORAGE_URL": f"s3://{s3_store.bucket}/{s3_store.prefix}",
        "S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "IMPORT_ALLOWED_PREFIXES": f"s3://{source}/{SOURCE_PREFIX}",
        "SWEEP_SECONDS": "0.5",
        **MALLOC_SETTINGS,  # as the launcher and the API image run the API
        "SOURCE_BUCKET": source,  # for the test; the service ignores it
    }
    service = Service(env, request.node.name)
    try:
        service.start_api()
        service.start_worker()
        yield service
    finally:
        service.stop()


def prompts() -> list[dict[str, Any]]:
    return [
        completion_line(f"big-{i:04d}", f"record {i}: say something", max_tokens=3, temperature=0) for i in range(LINES)
    ]


def padded_file(path: Path) -> str:
    """The prompts, each line padded with `user` to TOTAL_BYTES in all; returns its SHA-256 (hex)."""
    rows = prompts()
    for row in rows:
        row["body"]["user"] = ""
    base = [len(json.dumps(row).encode()) + 1 for row in rows]
    pad, rest = divmod(TOTAL_BYTES - sum(base), LINES)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index, row in enumerate(rows):
            row["body"]["user"] = "u" * (pad + (rest if index == LINES - 1 else 0))
            line = json.dumps(row).encode() + b"\n"
            out.write(line)
            digest.update(line)
    return digest.hexdigest()


class RssPeak:
    """The most a process's RSS grew over its level at the start, sampled on a thread."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def growth(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start


def warm_up(client: OpenAI) -> None:
    """A small upload in parts first: the first use of each route and of the S3 transfer
    code loads modules and starts threads, which is not what the 300 MB cost."""
    data = jsonl(prompts()[:20])
    upload = client.uploads.create(
        bytes=len(data), filename="warm.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    half = len(data) // 2
    ids = [client.uploads.parts.create(upload_id=upload.id, data=piece).id for piece in (data[:half], data[half:])]
    assert client.uploads.complete(upload_id=upload.id, part_ids=ids).status == "completed"


def api_pid(service: Service) -> int:
    return service.processes[0].pid


def wait_done(client: OpenAI, batch_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.5)
    raise TimeoutError(batch_id)


def texts(client: OpenAI, file_id: str) -> list[tuple[str, str]]:
    lines = read_jsonl(client.files.content(file_id).content)
    return [(line["custom_id"], line["response"]["body"]["choices"][0]["text"]) for line in lines]


def test_a_300_mb_file_in_parts_out_of_order_runs_and_matches_the_imported_prompts(
    s3_service: Service, tmp_path: Path
) -> None:
    service = s3_service
    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("big"), max_retries=0)
    path = tmp_path / "big.jsonl"
    sha256 = padded_file(path)
    data_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert path.stat().st_size == TOTAL_BYTES
    warm_up(client)

    rss = RssPeak(api_pid(service))
    started = time.monotonic()
    upload = client.uploads.create(
        bytes=TOTAL_BYTES, filename="big.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    offsets = list(range(0, TOTAL_BYTES, PART_BYTES))
    order = list(range(len(offsets)))
    random.Random(7).shuffle(order)

    def send(index: int) -> str:
        with path.open("rb") as source:
            source.seek(offsets[index])
            return client.uploads.parts.create(upload_id=upload.id, data=source.read(PART_BYTES)).id

    with ThreadPoolExecutor(2) as pool:  # two parts in flight at once, in shuffled order
        ids = dict(zip(order, pool.map(send, order), strict=True))
    sent = time.monotonic()
    sending_growth = rss.peak - rss.start
    done = client.uploads.complete(upload_id=upload.id, part_ids=[ids[i] for i in range(len(offsets))], md5=data_md5)
    completed = time.monotonic()
    growth = rss.growth()

    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == TOTAL_BYTES
    assert done.file.model_extra is not None and done.file.model_extra["lines"] == LINES
    assert done.file.model_extra["sha256"] == sha256
    print(  # the figures for the report
        f"\n300 MB in {len(offsets)} parts: sent in {sent - started:.1f}s "
        f"({TOTAL_BYTES / MIB / (sent - started):.0f} MB/s), "
        f"completed in {completed - sent:.1f}s, API RSS grew {growth / MIB:.0f} MB "
        f"({sending_growth / MIB:.0f} MB while the parts were sent)"
    )
    assert growth < MAX_RSS_GROWTH, f"API RSS grew {growth / MIB:.0f} MB"

    # The same prompts, unpadded, imported from the organisation's bucket: the reference.
    source = service.env["SOURCE_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"], region_name="us-east-1")
    s3.put_object(Bucket=source, Key=f"{SOURCE_PREFIX}prompts.jsonl", Body=jsonl(prompts()))
    imported = client.post("/files", body={"url": f"s3://{source}/{SOURCE_PREFIX}prompts.jsonl"}, cast_to=object)
    with pytest.raises(BadRequestError, match="IMPORT_ALLOWED_PREFIXES"):
        client.post("/files", body={"url": f"s3://{source}/elsewhere/prompts.jsonl"}, cast_to=object)

    batches = [
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/completions",
            completion_window="24h",
            extra_body={"batch_size": 64, "batching": "strict"},
        )
        for file_id in (done.file.id, imported["id"])  # type: ignore[index]
    ]
    big, reference = (wait_done(client, batch.id) for batch in batches)
    assert big.status == reference.status == "completed", (big, reference)
    assert big.request_counts is not None and big.request_counts.completed == LINES
    expected = texts(client, reference.output_file_id or "")
    assert [custom_id for custom_id, _ in expected] == [row["custom_id"] for row in prompts()]
    assert texts(client, big.output_file_id or "") == expected


def test_an_expired_uploads_parts_are_removed_by_the_apis_sweeper(s3_service: Service, s3_store: S3Store) -> None:
    from sqlalchemy import create_engine, text

    client = OpenAI(base_url=f"{s3_service.url}/v1", api_key=s3_service.api_key("late"), max_retries=0)
    upload = client.uploads.create(bytes=100, filename="late.jsonl", mime_type="application/jsonl", purpose="batch")
    client.uploads.parts.create(upload_id=upload.id, data=b"x" * 60)
    assert list(s3_store.list_keys(f"uploads/{upload.id}/"))
    engine = create_engine(s3_service.env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # an hour passes
        conn.execute(text("UPDATE uploads SET expires_at = now() WHERE id = :id"), {"id": upload.id})
    engine.dispose()
    deadline = time.monotonic() + 30
    while list(s3_store.list_keys(f"uploads/{upload.id}/")):
        assert time.monotonic() < deadline, "the expired upload's parts are still stored"
        time.sleep(0.2)
    with pytest.raises(Exception, match="expired"):
        client.uploads.parts.create(upload_id=upload.id, data=b"y")
