"""Lines that share a prompt prefix run together across the whole job (app.jobs.run_order),
even when the file interleaves them, and the answers still come back in input order."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.create import JobSpec, Owner, create_job
from tests.helpers import (
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

pytestmark = [pytest.mark.engine, pytest.mark.parametrize("store", ["local"], indirect=True)]

DOCUMENTS, QUESTIONS = 4, 3
TOO_LONG = "word " * 400  # longer than the test model's 256-token context: an error line


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, shard_size=6, regroup_distance_lines=2)  # a document 4 lines apart


def question_major() -> list[dict[str, object]]:
    """Every document with question 0, then every document with question 1, ...; line 5 too long."""
    rows = [
        completion_line(f"d{d}-q{q}", f"Document {d}: " + "the report says " * 20 + f"Question {q}?", max_tokens=2)
        for q in range(QUESTIONS)
        for d in range(DOCUMENTS)
    ]
    rows[5] = completion_line("d1-q1", TOO_LONG, max_tokens=2)
    return rows


def results_ids(client: TestClient, batch_id: str) -> list[str]:
    response = client.get(f"/v1/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    return [str(line["custom_id"]) for line in read_jsonl(response.content)]


def test_a_question_major_file_runs_document_by_document_and_answers_in_input_order(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = question_major()
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=3)
    run_worker_until_idle(engine, settings, store)
    done = wait_for_status(client, batch["id"], "completed")

    ran = results_ids(client, batch["id"])  # the order the lines ran in
    by_document = [f"d{d}-q{q}" for d in range(DOCUMENTS) for q in range(QUESTIONS) if (d, q) != (1, 1)]
    assert [i for i in ran if i != "d1-q1"] == by_document
    output = download(client, done["output_file_id"])
    errors = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in rows if r["custom_id"] != "d1-q1"]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert [line["custom_id"] for line in errors] == ["d1-q1"]
    assert done["request_counts"] == {"total": 12, "completed": 11, "failed": 1}


def test_a_regrouped_batch_cancelled_midway_lists_its_unrun_lines_in_input_order(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = question_major()
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=3)
    run_worker_until_idle(engine, settings, store, max_shards=1)  # the first 6 lines in run order
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200
    done = wait_for_status(client, batch["id"], "cancelled")

    # Documents 0 and 1 (line 5, too long, has a prefix of its own and runs last), then d2-q0.
    ran = {"d0-q0", "d0-q1", "d0-q2", "d1-q0", "d1-q2", "d2-q0"}
    output = download(client, done["output_file_id"])
    errors = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in rows if r["custom_id"] in ran]
    assert [line["custom_id"] for line in errors] == [r["custom_id"] for r in rows if r["custom_id"] not in ran]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}


def test_input_order_asked_for_is_kept(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = question_major()
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=3, pack_by_length=False)
    run_worker_until_idle(engine, settings, store)
    wait_for_status(client, batch["id"], "completed")
    assert results_ids(client, batch["id"]) == [r["custom_id"] for r in rows]


def test_a_regrouping_that_fails_leaves_the_batch_queued_in_input_order(
    client: TestClient, records: Records, settings: Settings
) -> None:
    file = upload(client, jsonl(question_major()))

    def broken(*_: object) -> None:
        raise OSError("storage went away")

    spec = JobSpec(input_file_id=file["id"], endpoint="/v1/completions")
    job = create_job(records, JobQueue(records.db), settings, spec, Owner("alice", None), order=broken)
    assert job.status == "queued" and job.run_input is None
