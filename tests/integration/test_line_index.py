"""A batch input's line index (app.jobs.line_index): written at upload beside the file, read
by finalization and `/results` for the custom_ids of lines that never ran, so the input is
not read and parsed again for them; a file uploaded before indexes still works the old way.

Each test with an index changes the custom_ids in the object the old path would read (the
input, or a regrouped job's run input) after the lines ran: answers naming the original ids
came from the index."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.records import Records
from app.jobs.endpoints.base import ModelLimits
from app.jobs.line_index import LineIndex, index_key
from app.jobs.run_order import read_order
from tests.fakes import FakeEngine
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

pytestmark = both_stores

DOCUMENTS, QUESTIONS = 4, 3


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, shard_size=6, regroup_distance_lines=2)


def rows_in_input_order(count: int) -> list[dict[str, Any]]:
    return [completion_line(f"keep-{i:03d}", f"line number {i}", max_tokens=2) for i in range(count)]


def question_major() -> list[dict[str, Any]]:
    """Every document with question 0, then with question 1, ...: regrouped when the job is made."""
    return [
        completion_line(f"keep-d{d}q{q}", f"Document {d}: " + "the report says " * 20 + f"Question {q}?", max_tokens=2)
        for q in range(QUESTIONS)
        for d in range(DOCUMENTS)
    ]


def renamed(store: ObjectStore, key: str) -> None:
    """Every custom_id in the object at `key` changed, its size kept."""
    data = b"".join(store.read_chunks(key))
    assert b'"keep-' in data
    store.put_bytes(key, data.replace(b'"keep-', b'"lost-'))


def forget_index(records: Records, store: ObjectStore, file_id: str) -> None:
    """The file as uploaded before indexes: no offsets recorded, no index stored."""
    with records.db.engine.begin() as conn:
        conn.execute(text("UPDATE files SET validation = validation - 'custom_ids' WHERE id = :id"), {"id": file_id})
    source = records.get_file(file_id)
    assert LineIndex.of(source) is None
    store.delete(index_key(source.storage_key))


def results_ids(client: TestClient, batch_id: str, after: int) -> list[str]:
    response = client.get(f"/v1/batches/{batch_id}/results", params={"after": after})
    assert response.status_code == 200, response.text
    return [str(line["custom_id"]) for line in read_jsonl(response.content)]


def test_an_upload_writes_every_custom_id_beside_the_file_and_a_delete_removes_it(
    client: TestClient, records: Records, store: ObjectStore
) -> None:
    rows = [completion_line(custom_id, "p") for custom_id in ['a "b"', '"c"', "d\ne", "é", "x" * 512]]
    file = upload(client, jsonl(rows))
    source = records.get_file(file["id"])
    index = LineIndex.of(source)
    assert index is not None and index.key == f"files/{file['id']}.ids" and store.exists(index.key)
    assert list(index.custom_ids_from(store, 0)) == [row["custom_id"] for row in rows]
    assert client.delete(f"/v1/files/{file['id']}").status_code == 200
    assert not store.exists(index.key) and list(store.list_keys("files/")) == []


def test_an_upload_in_parts_writes_its_index_too(client: TestClient, records: Records, store: ObjectStore) -> None:
    data = jsonl(rows_in_input_order(30))
    body = {"bytes": len(data), "filename": "f.jsonl", "purpose": "batch", "mime_type": "application/jsonl"}
    created = client.post("/v1/uploads", json=body).json()
    parts = [
        client.post(f"/v1/uploads/{created['id']}/parts", files={"data": ("blob", piece)}).json()["id"]
        for piece in (data[:333], data[333:])
    ]
    done = client.post(f"/v1/uploads/{created['id']}/complete", json={"part_ids": parts})
    assert done.status_code == 200, done.text
    index = LineIndex.of(records.get_file(done.json()["file"]["id"]))
    assert index is not None
    assert list(index.custom_ids_from(store, 25)) == [f"keep-{i:03d}" for i in range(25, 30)]


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "uploaded-before-indexes"])
def test_a_cancelled_batch_names_its_unrun_lines(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore, indexed: bool
) -> None:
    rows = rows_in_input_order(20)
    file = upload(client, jsonl(rows))
    if not indexed:
        forget_index(records, store, file["id"])
    batch = create_batch(client, file["id"], batch_size=3)
    run_worker_until_idle(FakeEngine(), settings, store, max_shards=1)  # lines 0 to 5
    if indexed:
        renamed(store, records.get_file(file["id"]).storage_key)
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200
    done = wait_for_status(client, batch["id"], "cancelled")

    ids = [row["custom_id"] for row in rows]
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == ids[:6]
    errors = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in errors] == ids[6:]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert results_ids(client, batch["id"], 0) == ids
    assert results_ids(client, batch["id"], 13) == ids[13:]  # a page from a line inside the unrun stretch


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "uploaded-before-indexes"])
def test_a_regrouped_batch_cancelled_midway_names_its_unrun_lines(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore, indexed: bool
) -> None:
    rows = question_major()
    file = upload(client, jsonl(rows))
    if not indexed:
        forget_index(records, store, file["id"])
    batch = create_batch(client, file["id"], batch_size=3)
    run = records.get_job(batch["id"]).run_input
    assert run is not None  # regrouped: run positions are input lines through the order
    engine = FakeEngine()
    engine.limits = ModelLimits(max_model_len=1024, vocab_size=256)  # room for prompts sharing 256 characters
    run_worker_until_idle(engine, settings, store, max_shards=1)  # run positions 0 to 5
    if indexed:
        renamed(store, run.key)
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200
    done = wait_for_status(client, batch["id"], "cancelled")

    ids = [row["custom_id"] for row in rows]
    order = read_order(store, run.order_key)
    ran = {ids[index] for index in order[:6]}
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == [i for i in ids if i in ran]
    errors = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in errors] == [i for i in ids if i not in ran]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    in_run_order = [ids[index] for index in order]
    assert results_ids(client, batch["id"], 0) == in_run_order
    assert results_ids(client, batch["id"], 8) == in_run_order[8:]
