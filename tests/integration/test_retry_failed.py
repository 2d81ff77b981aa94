"""Retry what failed: a child batch of the failed lines, and the merged output."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import completion_line, create_batch, download, jsonl, read_jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine

TOO_LONG = "word " * 400  # longer than the test model's 256-token context


def finished_parent(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine) -> dict:
    """12 lines: two prompts too long for the context, one asking for more tokens than it holds."""
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=3) for i in range(12)]
    rows[3]["body"]["prompt"] = rows[8]["body"]["prompt"] = TOO_LONG  # type: ignore[index]
    rows[5]["body"]["max_tokens"] = 1000  # type: ignore[index]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=4)
    run_worker_until_idle(engine, settings, store)
    done: dict = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["request_counts"] == {"total": 12, "completed": 9, "failed": 3}
    return done


def test_only_the_failed_lines_run_again_and_merge_back_in_order(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    parent = finished_parent(client, settings, store, engine)

    response = client.post(f"/v1/batches/{parent['id']}/retry", json={"max_tokens": 4, "truncate_prompts": True})
    assert response.status_code == 200, response.text
    child = response.json()
    assert child["parent_batch_id"] == parent["id"] and child["status"] == "validating"
    assert child["request_counts"]["total"] == 3 and child["batch_size"] == parent["batch_size"]
    retried = read_jsonl(client.get(f"/v1/files/{child['input_file_id']}/content").content)
    assert [line["custom_id"] for line in retried] == ["r3", "r5", "r8"]
    assert all(line["body"]["max_tokens"] == 4 for line in retried)

    run_worker_until_idle(engine, settings, store)
    child = client.get(f"/v1/batches/{child['id']}").json()
    assert child["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert client.get(f"/v1/batches/{parent['id']}").json()["child_batch_ids"] == [child["id"]]

    merged = client.get(f"/v1/batches/{parent['id']}/merged_output")
    assert merged.status_code == 200
    lines = read_jsonl(merged.content)
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(12)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    own = download(client, parent["output_file_id"])
    assert [line for line in lines if line["custom_id"] not in ("r3", "r5", "r8")] == own
    assert [line for line in lines if line["custom_id"] in ("r3", "r5", "r8")] == download(
        client, child["output_file_id"]
    )


def test_a_retry_that_fails_again_can_be_retried_and_still_merges(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    parent = finished_parent(client, settings, store, engine)
    first = client.post(f"/v1/batches/{parent['id']}/retry", json={"max_tokens": 4}).json()  # r3, r8 still too long
    run_worker_until_idle(engine, settings, store)
    first = client.get(f"/v1/batches/{first['id']}").json()
    assert first["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    so_far = read_jsonl(client.get(f"/v1/batches/{parent['id']}/merged_output").content)
    assert [line["custom_id"] for line in so_far] == [f"r{i}" for i in range(12) if i not in (3, 8)]

    second = client.post(f"/v1/batches/{first['id']}/retry", json={"truncate_prompts": True}).json()
    assert second["request_counts"]["total"] == 2 and second["parent_batch_id"] == first["id"]
    run_worker_until_idle(engine, settings, store)
    lines = read_jsonl(client.get(f"/v1/batches/{parent['id']}/merged_output").content)
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(12)]


def test_retry_is_refused_when_there_is_nothing_to_retry_or_it_is_not_yours(
    client: TestClient, other_client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    running = create_batch(client, upload(client, jsonl([completion_line("a", "x")]))["id"])
    refused = client.post(f"/v1/batches/{running['id']}/retry")
    assert refused.status_code == 409 and "ended" in refused.json()["error"]["message"]
    run_worker_until_idle(engine, settings, store)
    clean = client.post(f"/v1/batches/{running['id']}/retry")
    assert clean.status_code == 409 and "no failed lines" in clean.json()["error"]["message"]

    parent = finished_parent(client, settings, store, engine)
    assert other_client.post(f"/v1/batches/{parent['id']}/retry").status_code == 404
    assert other_client.get(f"/v1/batches/{parent['id']}/merged_output").status_code == 404
    assert json.loads(client.get(f"/v1/batches/{parent['id']}").content)["child_batch_ids"] == []
