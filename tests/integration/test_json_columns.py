"""The JSON columns read as their pydantic types (app.core.json_column) and store the JSON
shapes they stored as plain dicts, so rows written before they were typed read back, and
raw SQL (the claim, the quotas) finds what it always found."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from app.core.database import Database
from app.data.ids import new_id, now
from app.data.json_values import JobDefaults, JobEstimate, UploadCheck
from app.data.models import FileRecord, Job
from app.data.queue import JobQueue
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload, wait_for_estimate


def stored(db: Database, sql: str, **params: object) -> Any:
    """One value as Postgres holds it (psycopg decodes JSON; SQL NULL is None)."""
    with db.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def test_an_uploads_check_is_stored_as_before_and_reads_as_an_upload_check(
    client: TestClient, db: Database, records: Records
) -> None:
    file = upload(client, jsonl([completion_line("a", "x"), {"custom_id": "b"}]))
    raw = stored(db, "SELECT validation FROM files WHERE id = :id", id=file["id"])
    assert raw == {
        "errors": [raw["errors"][0]],
        "error_count": 1,
        "first_line_of": {"/v1/completions": 1},
        "line_offsets": {"every": 10_000, "offsets": [0]},
        "custom_ids": {"every": 8192, "offsets": [0]},  # where the line index's entries start
    }
    assert set(raw["errors"][0]) == {"code", "message", "param", "line"} and raw["errors"][0]["line"] == 2

    check = records.get_file(file["id"]).validation
    assert isinstance(check, UploadCheck) and check.error_count == 1 and check.errors == raw["errors"]
    assert check.line_offsets is not None and check.line_offsets.start(5) == (0, 0)

    failed = create_batch(client, file["id"])  # the check's line error fails the batch, as OpenAI's entry
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["line"] == 2


def test_a_file_not_checked_stores_an_empty_object(db: Database, records: Records) -> None:
    for given in ({}, {"validation": UploadCheck()}):
        record = FileRecord(
            id=new_id("file-"), filename="out.jsonl", purpose="batch_output", bytes=0, sha256="", storage_key="k"
        )
        for name, value in given.items():
            setattr(record, name, value)
        records.add_file(record)
        assert stored(db, "SELECT validation FROM files WHERE id = :id", id=record.id) == {}
        assert records.get_file(record.id).validation == UploadCheck()


def test_a_jobs_defaults_and_estimate_are_stored_as_before_and_read_as_their_types(
    client: TestClient, db: Database, records: Records
) -> None:
    file = upload(client, jsonl([completion_line("a", "x"), completion_line("b", "y")]))
    batch = create_batch(client, file["id"], max_tokens=16, pack_by_length=False)
    shown = wait_for_estimate(client, batch["id"])

    row = "SELECT {} FROM jobs WHERE id = :id"
    assert stored(db, row.format("sampling_defaults"), id=batch["id"]) == {"max_tokens": 16}  # defaults left out
    assert stored(db, row.format("run_input IS NULL"), id=batch["id"])  # SQL NULL, not JSON null
    job = records.get_job(batch["id"])
    assert job.sampling_defaults == JobDefaults(max_tokens=16) and job.run_input is None
    assert isinstance(job.estimate, JobEstimate) and job.estimate.runnable_lines == 2
    assert stored(db, row.format("estimate"), id=batch["id"]) == job.estimate.model_dump(mode="json")
    assert shown == job.estimate.model_dump(mode="json")  # the API shows what is stored
    view, _, _ = records.job_view(batch["id"])  # read by a Core select, not the ORM
    assert view.estimate == job.estimate and view.sampling_defaults == job.sampling_defaults

    strict = create_batch(client, file["id"], max_tokens=8, batching="strict", truncate_prompts=True)
    assert stored(db, row.format("sampling_defaults"), id=strict["id"]) == {
        "max_tokens": 8,
        "truncate_prompts": True,
        "pack_window": records.get_job(strict["id"]).sampling_defaults.pack_window,
        "batching": "strict",
    }


def test_rows_written_as_dicts_read_as_their_types_and_claim_as_before(
    client: TestClient, db: Database, records: Records, queue: JobQueue
) -> None:
    file = upload(client, jsonl([completion_line("a", "x")]))
    batch = create_batch(client, file["id"], pack_by_length=False)
    # As a row written before the columns were typed: JSON null for none, a bare dict of defaults.
    with db.engine.begin() as conn:
        conn.execute(
            text(
                'UPDATE jobs SET sampling_defaults = \'{"max_tokens": 8, "batching": "strict"}\','
                " estimate = 'null'::jsonb, run_input = 'null'::jsonb WHERE id = :id"
            ),
            {"id": batch["id"]},
        )
    job = records.get_job(batch["id"])
    assert job.sampling_defaults == JobDefaults(max_tokens=8, batching="strict")
    assert job.estimate is None and job.run_input is None

    shard = queue.claim_shard("w1", job.model, 60)
    assert shard is not None and shard.job_id == batch["id"]
    assert shard.sampling_defaults == JobDefaults(max_tokens=8, batching="strict")
    assert not shard.regrouped  # JSON null is no run input
    assert shard.line_offsets == records.get_file(file["id"]).validation.line_offsets


def test_a_bulk_insert_of_dict_rows_stores_them_through_the_type(db: Database, records: Records) -> None:
    file = records.add_file(
        FileRecord(id=new_id("file-"), filename="in.jsonl", purpose="batch", bytes=1, sha256="", storage_key="k")
    )
    job_id = new_id("batch_")
    values = {
        "id": job_id,
        "input_file_id": file.id,
        "endpoint": "/v1/completions",
        "completion_window": "24h",
        "model": "demo-llama",
        "status": "queued",
        "expires_at": now(),
    }
    with db.session() as session:  # as bench.queued_jobs inserts its jobs
        session.execute(insert(Job), [{**values, "sampling_defaults": {"max_tokens": 16, "batching": "overlapped"}}])
    assert stored(db, "SELECT sampling_defaults FROM jobs WHERE id = :id", id=job_id) == {"max_tokens": 16}
    assert records.get_job(job_id).sampling_defaults == JobDefaults(max_tokens=16)
