"""A job through the API and a worker holding the real vLLM engine, on each storage backend."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.sweeper import sweep
from tests.helpers import (
    both_stores,
    chat_line,
    completion_line,
    create_batch,
    download,
    jsonl,
    run_worker_until_idle,
    upload,
    wait_for_status,
)
from worker.engine import VllmEngine
from worker.loop import WorkerLoop
from worker.shard_runner import DEFAULT_STATIC_BATCHES_IN_FLIGHT

pytestmark = pytest.mark.engine

pytestmark = both_stores


def test_every_line_comes_back_in_input_order(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = []
    for i in range(70):
        if i % 3 == 0:
            rows.append({"custom_id": f"plain-{i}", "prompt": f"write a summary of document {i}"})
        else:
            rows.append(completion_line(f"req-{i}", f"explain item {i}", max_tokens=5 + i % 7, temperature=0.7, seed=i))
    file = upload(client, jsonl(rows))
    assert file["lines"] == 70
    batch = create_batch(client, file["id"], batch_size=16)
    assert batch["request_counts"]["total"] == 70

    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 70, "completed": 70, "failed": 0}
    assert done["error_file_id"] is None
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    for row, line in zip(rows, output, strict=True):
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert body["object"] == "text_completion"
        wanted = row.get("body", {}).get("max_tokens", settings.default_max_tokens)
        assert 1 <= body["usage"]["completion_tokens"] <= wanted
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    generated = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert done["usage"]["output_tokens"] == generated
    assert done["throughput"]["generation_tokens_per_second"] > 0


def test_chat_lines_go_through_the_chat_template(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = [chat_line(f"chat-{i}", f"question number {i}", max_tokens=6) for i in range(5)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint="/v1/chat/completions")
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    output = download(client, done["output_file_id"])
    tokenizer = engine.tokenizer
    for row, line in zip(rows, output, strict=True):
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        rendered = tokenizer.apply_chat_template(row["body"]["messages"], add_generation_prompt=True, tokenize=False)
        assert rendered.startswith("<|begin_of_text|><|start_header_id|>system")
        assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(rendered, add_special_tokens=False))


def test_a_prompt_too_long_for_the_context_is_one_error_line(
    client: TestClient, settings: Settings, store: ObjectStore, engine
):  # type: ignore[no-untyped-def]
    rows = [
        completion_line("short-1", "hello", max_tokens=4),
        completion_line("too-long", "word " * 400, max_tokens=4),
        completion_line("short-2", "again", max_tokens=4),
    ]
    batch = create_batch(client, upload(client, jsonl(rows))["id"])
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == ["short-1", "short-2"]
    [error] = download(client, done["error_file_id"])
    assert error["custom_id"] == "too-long"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in error["response"]["body"]["error"]["message"]


def test_an_unsupported_field_is_refused_on_its_line(
    client: TestClient, settings: Settings, store: ObjectStore, engine
):  # type: ignore[no-untyped-def]
    rows = [completion_line("ok", "hi", max_tokens=2), completion_line("odd", "hi", max_tokens=2, best_of=3)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"])
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    [error] = download(client, done["error_file_id"])
    assert error["custom_id"] == "odd"
    assert "best_of" in error["response"]["body"]["error"]["message"]


def test_each_static_batch_records_its_statistics(
    client: TestClient, settings: Settings, store: ObjectStore, engine, records: Records
):  # type: ignore[no-untyped-def]
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=3) for i in range(10)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=4, pack_by_length=False)
    run_worker_until_idle(engine, settings, store)

    runs = records.windows(batch["id"])
    assert [(r.first_line, r.prompts) for r in runs] == [(0, 4), (4, 4), (8, 2)]
    for run in runs:
        assert run.prompt_tokens > 0 and run.completion_tokens > 0 and run.generate_seconds > 0
        assert run.tokens_per_second == pytest.approx(run.completion_tokens / run.generate_seconds)
    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["static_batches"] == 3 and stats["batch_size"] == 4 and stats["workers"] == 1
    assert stats["completion_tokens"] == sum(r.completion_tokens for r in runs)
    assert stats["generation_tokens_per_second"] == pytest.approx(
        stats["completion_tokens"] / sum(r.generate_seconds for r in runs), rel=1e-3, abs=0.06
    )  # rounded to a tenth of a token/s
    assert sum(bucket["lines"] for bucket in stats["output_length_histogram"]) == 10
    assert all(bucket["from_tokens"] <= 3 for bucket in stats["output_length_histogram"])  # max_tokens=3
    assert [b["first_line"] for b in sorted(stats["windows"], key=lambda b: b["first_line"])] == [0, 4, 8]
    assert stats["queue_wait_seconds"] >= 0 and stats["end_to_end_tokens_per_second"] > 0
    written = json.loads(b"".join(store.read_chunks(f"batches/{batch['id']}/stats.json")))
    assert written["completion_tokens"] == stats["completion_tokens"] and len(written["windows"]) == 3


def run_worker_with_hook_after_batch(
    engine: VllmEngine, settings: Settings, store: ObjectStore, after_seq: int, hook: Callable[[], object]
) -> None:
    """Runs a worker until idle, calling `hook` right after static batch `after_seq` is recorded."""
    db = Database(settings.database_url or "")
    worker_queue = JobQueue(db)
    original = worker_queue.record_window

    def record_then_hook(shard, seq, *args, **kwargs):  # type: ignore[no-untyped-def]
        status = original(shard, seq, *args, **kwargs)
        if seq == after_seq:
            hook()
        return status

    worker_queue.record_window = record_then_hook  # type: ignore[method-assign]
    loop = WorkerLoop(engine, Records(db), worker_queue, store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    while loop.run_once():
        pass
    db.dispose()


LINES = 2 * (3 * DEFAULT_STATIC_BATCHES_IN_FLIGHT)  # static batches of 2


def test_cancel_stops_at_a_batch_boundary_and_keeps_what_was_done(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    # More static batches than are ever in flight at once, so some are still to run.
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=3) for i in range(LINES)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=2, pack_by_length=False)

    run_worker_with_hook_after_batch(
        engine, settings, store, 1, lambda: client.post(f"/v1/batches/{batch['id']}/cancel")
    )

    done = wait_for_status(client, batch["id"], "cancelled")
    assert done["cancelled_at"] is not None
    kept = download(client, done["output_file_id"])
    assert 4 <= len(kept) < LINES
    assert [line["custom_id"] for line in kept] == [f"r{i}" for i in range(len(kept))]
    rest = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in rest] == [f"r{i}" for i in range(len(kept), LINES)]
    assert {line["error"]["code"] for line in rest} == {"batch_cancelled"}


def test_a_running_batch_that_expires_stops_at_a_boundary_and_keeps_what_was_done(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, records: Records, queue: JobQueue
) -> None:
    # More static batches than are ever in flight at once, so some are still to run.
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=3) for i in range(LINES)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=2, pack_by_length=False)

    def overdue() -> None:
        with records.db.session() as session:
            session.execute(
                text("UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": batch["id"]}
            )
        assert sweep(records, queue, store, "test-sweeper", 60, 3) == []  # a shard runs: its worker finalizes
        assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "finalizing"

    run_worker_with_hook_after_batch(engine, settings, store, 0, overdue)

    done = wait_for_status(client, batch["id"], "expired")
    assert done["expired_at"] is not None
    kept = download(client, done["output_file_id"])
    rest = download(client, done["error_file_id"])
    assert 2 <= len(kept) < LINES and len(kept) + len(rest) == LINES
    assert [line["custom_id"] for line in kept + rest] == [f"r{i}" for i in range(LINES)]
    assert {line["error"]["code"] for line in rest} == {"batch_expired"}
    assert done["request_counts"] == {"total": LINES, "completed": len(kept), "failed": len(rest)}
