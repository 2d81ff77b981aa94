"""Existing OpenAI Batch API client code, unchanged, against the service: the official
`openai` SDK drives the whole lifecycle, and every object is checked against the
SDK's own types."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from openai import NotFoundError, OpenAI
from openai.types import Batch, FileObject

from tests.e2e.conftest import Service
from tests.helpers import chat_line, jsonl

pytestmark = pytest.mark.engine
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def sdk(service: Service, owner: str = "sdk-user") -> OpenAI:
    return OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key(owner), max_retries=0)


def wait(client: OpenAI, batch_id: str, until: set[str] = TERMINAL) -> Batch:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise TimeoutError(batch_id)


def strict(model: type, raw: dict) -> None:  # type: ignore[type-arg]
    """Validates a raw JSON object against an SDK type (the SDK itself parses leniently)."""
    model.model_validate(raw, strict=False)  # type: ignore[attr-defined]


def test_the_batch_lifecycle_through_the_openai_sdk(running_service: Service, tmp_path: Path) -> None:
    client = sdk(running_service)
    rows = [chat_line(f"q{i}", f"question {i}", max_tokens=5) for i in range(30)]
    rows.append(chat_line("too-long", "word " * 400, max_tokens=5))
    path = tmp_path / "batch.jsonl"
    path.write_bytes(jsonl(rows))

    file = client.files.create(file=path.open("rb"), purpose="batch")
    assert isinstance(file, FileObject) and file.purpose == "batch" and file.bytes == path.stat().st_size
    assert client.files.retrieve(file.id).filename == "batch.jsonl"

    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "sdk"},
        extra_body={"batch_size": 8},
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"suite": "sdk"}
    assert batch.model_extra and batch.model_extra["batch_size"] == 8

    done = wait(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (31, 30, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at < done.expires_at  # type: ignore[operator]
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    strict(Batch, running_service_raw(running_service, client, f"/batches/{batch.id}"))

    output = [json.loads(line) for line in client.files.content(done.output_file_id or "").text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"q{i}" for i in range(30)]
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in output)
    [error] = [json.loads(line) for line in client.files.content(done.error_file_id or "").text.splitlines()]
    assert error["custom_id"] == "too-long" and error["response"]["status_code"] == 400


def running_service_raw(service: Service, client: OpenAI, path: str) -> dict:  # type: ignore[type-arg]
    response = client.get(path, cast_to=object)
    assert isinstance(response, dict)
    return response


def test_listing_pages_through_every_batch(running_service: Service, tmp_path: Path) -> None:
    client = sdk(running_service, "lister")
    path = tmp_path / "one.jsonl"
    path.write_bytes(jsonl([chat_line("a", "hi", max_tokens=2)]))
    file = client.files.create(file=path.open("rb"), purpose="batch")
    made = [
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(5)
    ]

    page = client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # auto-paging, newest first
    assert {f.id for f in client.files.list(purpose="batch")} == {file.id}


def test_cancel_a_running_batch_keeps_its_partial_output(running_service: Service, tmp_path: Path) -> None:
    client = sdk(running_service, "canceller")
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl([chat_line(f"c{i}", f"topic {i}", max_tokens=64) for i in range(600)]))
    file = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", extra_body={"batch_size": 8}
    )
    while client.batches.retrieve(batch.id).request_counts.completed == 0:  # type: ignore[union-attr]
        time.sleep(0.1)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    kept = client.files.content(done.output_file_id or "").text.splitlines()
    rest = client.files.content(done.error_file_id or "").text.splitlines()
    assert 0 < len(kept) < 600 and len(kept) + len(rest) == 600
    assert [json.loads(line)["custom_id"] for line in kept + rest] == [f"c{i}" for i in range(600)]


def test_another_owner_cannot_reach_a_batch(running_service: Service, tmp_path: Path) -> None:
    owner, stranger = sdk(running_service, "owner"), sdk(running_service, "stranger")
    path = tmp_path / "mine.jsonl"
    path.write_bytes(jsonl([chat_line("a", "hi", max_tokens=2)]))
    file = owner.files.create(file=path.open("rb"), purpose="batch")
    batch = owner.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(NotFoundError):
        stranger.files.content(file.id)
