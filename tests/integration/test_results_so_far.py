"""Results so far: a consumer reads finished lines in input order while the batch runs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import (
    both_stores,
    completion_line,
    create_batch,
    download,
    jsonl,
    read_jsonl,
    run_worker_until_idle,
    upload,
    wait_for_status,
)
from tests.integration.conftest import make_settings
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine

TOO_LONG = "word " * 400  # longer than the test model's 256-token context

pytestmark = both_stores


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, shard_size=10)


def rows_with_failures(count: int) -> list[dict[str, object]]:
    return [completion_line(f"r{i}", TOO_LONG if i in (5, 17) else f"item {i}", max_tokens=3) for i in range(count)]


def results(client: TestClient, batch_id: str, **params: int) -> tuple[list[dict[str, object]], int, bool]:
    response = client.get(f"/v1/batches/{batch_id}/results", params=params)
    assert response.status_code == 200, response.text
    lines = read_jsonl(response.content)
    assert int(response.headers["X-Lines"]) == len(lines)
    return lines, int(response.headers["X-Next-After"]), response.headers["X-Complete"] == "true"


def ids(lines: list[dict[str, object]]) -> list[object]:
    return [line["custom_id"] for line in lines]


def test_finished_lines_come_in_input_order_with_a_cursor(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    batch = create_batch(client, upload(client, jsonl(rows_with_failures(30)))["id"], batch_size=4)
    assert results(client, batch["id"]) == ([], 0, False)

    run_worker_until_idle(engine, settings, store, max_shards=1)
    first, cursor, complete = results(client, batch["id"])
    assert ids(first) == [f"r{i}" for i in range(10)] and cursor == 10 and not complete
    assert first[5]["response"]["body"]["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    assert all(line["response"]["status_code"] == 200 for i, line in enumerate(first) if i != 5)  # type: ignore[index]
    middle, next_cursor, _ = results(client, batch["id"], after=4, limit=3)
    assert ids(middle) == ["r4", "r5", "r6"] and next_cursor == 7

    run_worker_until_idle(engine, settings, store)
    rest, cursor, complete = results(client, batch["id"], after=cursor)
    assert ids(rest) == [f"r{i}" for i in range(10, 30)] and cursor == 30 and complete

    done = client.get(f"/v1/batches/{batch['id']}").json()
    output = download(client, done["output_file_id"])
    errors = download(client, done["error_file_id"])
    streamed = first + rest
    assert [line for line in streamed if line["response"]["status_code"] == 200] == output  # type: ignore[index]
    assert [line for line in streamed if line["response"]["status_code"] != 200] == errors  # type: ignore[index]


def test_a_later_shard_waits_for_the_gap_before_it(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    batch = create_batch(client, upload(client, jsonl(rows_with_failures(20)))["id"], batch_size=5)
    db = Database(settings.database_url or "")
    held = "UPDATE shards SET status = '{status}', worker_id = {worker}, lease_expires_at = {lease} WHERE index = 0"
    with db.engine.begin() as conn:  # another worker holds the first shard
        conn.execute(text(held.format(status="running", worker="'elsewhere'", lease="now() + interval '1 hour'")))
    run_worker_until_idle(engine, settings, store)  # runs the second shard only
    assert results(client, batch["id"]) == ([], 0, False)

    with db.engine.begin() as conn:  # the other worker gave up its shard
        conn.execute(text(held.format(status="queued", worker="NULL", lease="NULL")))
    db.dispose()
    run_worker_until_idle(engine, settings, store)
    lines, cursor, complete = results(client, batch["id"])
    assert ids(lines) == [f"r{i}" for i in range(20)] and cursor == 20 and complete


def test_a_cancelled_batch_ends_with_its_unrun_lines(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    batch = create_batch(client, upload(client, jsonl(rows_with_failures(25)))["id"], batch_size=5)
    run_worker_until_idle(engine, settings, store, max_shards=1)
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] in ("cancelling", "cancelled")
    wait_for_status(client, batch["id"], "cancelled")

    lines, cursor, complete = results(client, batch["id"])
    assert ids(lines) == [f"r{i}" for i in range(25)] and cursor == 25 and complete
    assert all(line["error"]["code"] == "batch_cancelled" for line in lines[10:])  # type: ignore[index]
    assert all(line["response"] is not None for line in lines[:10])
