"""The OpenAI-compatible surface over HTTP: listing, pagination, deletion, limits,
metadata, cancel and expiry of batches that never ran."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.sweeper import sweep
from tests.helpers import (
    both_stores,
    completion_line,
    create_batch,
    download,
    jsonl,
    upload,
    wait_for_estimate,
    wait_for_status,
)

pytestmark = both_stores


def make_batches(client: TestClient, count: int) -> list[str]:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    return [create_batch(client, file_id)["id"] for _ in range(count)]


def test_batches_page_newest_first_with_after_and_limit(client: TestClient) -> None:
    ids = make_batches(client, 5)[::-1]  # newest first
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    rest = client.get("/v1/batches", params={"limit": 10, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[2:]
    assert rest["has_more"] is False


def test_files_list_filters_by_purpose_and_delete_removes_the_file(client: TestClient, store: ObjectStore) -> None:
    first = upload(client, jsonl([completion_line("a", "x")]))
    second = upload(client, jsonl([completion_line("b", "y")]))
    listed = client.get("/v1/files", params={"purpose": "batch", "limit": 1}).json()
    assert [f["id"] for f in listed["data"]] == [second["id"]] and listed["has_more"] is True
    assert client.get("/v1/files", params={"purpose": "batch_output"}).json()["data"] == []

    assert client.delete(f"/v1/files/{first['id']}").json() == {"id": first["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{first['id']}").status_code == 404
    assert not store.exists(f"files/{first['id']}")


def test_a_file_read_by_a_running_batch_cannot_be_deleted(client: TestClient) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    create_batch(client, file_id)
    response = client.delete(f"/v1/files/{file_id}")
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_uploads_over_the_limits_get_413_and_leave_nothing(
    settings: Settings, client: TestClient, store: ObjectStore
) -> None:
    app_settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    app_settings.max_upload_bytes = 1000
    response = client.post("/v1/files", files={"file": ("big.jsonl", b"x" * 5000)}, data={"purpose": "batch"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    app_settings.max_upload_bytes = 10**9
    app_settings.max_upload_lines = 3
    response = client.post(
        "/v1/files",
        files={"file": ("many.jsonl", jsonl([completion_line(f"r{i}", "p") for i in range(5)]))},
        data={"purpose": "batch"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_lines"
    assert client.get("/v1/files").json()["data"] == []


def test_metadata_follows_openais_limits(client: TestClient) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    ok = create_batch(client, file_id, metadata={"team": "eval", "run": "7"})
    assert ok["metadata"] == {"team": "eval", "run": "7"}
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        response = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "metadata": metadata}
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "metadata"


def test_cancelling_a_queued_batch_answers_cancelling_then_ends_it_with_every_line_in_the_error_file(
    client: TestClient,
) -> None:
    rows = [completion_line(f"r{i}", "p") for i in range(3)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"])
    answer = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert answer["status"] in ("cancelling", "cancelled") and answer["cancelling_at"] is not None
    cancelled = wait_for_status(client, batch["id"], "cancelled")  # the API's sweeper ends it: nothing runs
    assert cancelled["cancelled_at"] is not None
    assert download(client, cancelled["output_file_id"]) == []
    errors = download(client, cancelled["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        (f"r{i}", "batch_cancelled", None) for i in range(3)
    ]
    again = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_failed_or_finished_batch_cannot_be_cancelled(client: TestClient) -> None:
    failed = create_batch(client, upload(client, b"not json\n")["id"])
    response = client.post(f"/v1/batches/{failed['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_a_batch_past_its_window_expires_with_its_lines_in_the_error_file(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    rows = [completion_line(f"r{i}", "p") for i in range(4)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"])
    wait_for_estimate(client, batch["id"])  # its writer holds the job row a moment; the sweep skips a locked job
    with records.db.session() as session:
        session.execute(
            text("UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": batch["id"]}
        )
    assert queue.claim_shard("w", "demo-llama", 60) is None  # overdue work is never claimed
    assert sweep(records, queue, store, "test-sweeper", 60, 3) == [batch["id"]]

    expired = client.get(f"/v1/batches/{batch['id']}").json()
    assert expired["status"] == "expired" and expired["expired_at"] is not None
    assert expired["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
    assert download(client, expired["output_file_id"]) == []
    codes = [(e["custom_id"], e["error"]["code"]) for e in download(client, expired["error_file_id"])]
    assert codes == [(f"r{i}", "batch_expired") for i in range(4)]
    assert sweep(records, queue, store, "test-sweeper", 60, 3) == []
