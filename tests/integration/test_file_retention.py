"""File retention in OpenAI's shapes: `expires_after` on upload, `output_expires_after` on
a batch, `expires_at` on the file object, FILE_RETENTION_DAYS by default, and the
sweeper deleting expired files (object and row, and an ended job's parts with its
output), never a file a job that has not ended still reads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI
from openai.types import Batch, FileObject
from sqlalchemy import text

from app.core.database import Database
from app.core.errors import NotFound
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.ids import new_id, now
from app.data.json_values import JobDefaults
from app.data.keys import create_key
from app.data.models import Job, JobStatus
from app.data.queue import JobQueue
from app.data.records import Records
from app.data.retention import ExpiredFile, delete_expired_files
from app.jobs.output_lines import part_key
from app.jobs.retention import delete_expired, job_prefix
from app.jobs.sweeper import sweep
from tests.fakes import FakeEngine
from tests.helpers import both_stores, completion_line, create_batch, jsonl, upload, wait_for_estimate
from worker.loop import WorkerLoop

DAY = 86_400


def expire(db: Database, file_ids: Iterable[str]) -> None:
    """Time passes: the files' expiry is a second ago."""
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY(:ids)"),
            {"ids": list(file_ids)},
        )


def run_sweep(records: Records, queue: JobQueue, store: ObjectStore) -> None:
    sweep(records, queue, store, "test-sweeper", 60, 3)


def run_jobs(records: Records, queue: JobQueue, store: ObjectStore) -> WorkerLoop:
    """A worker with the fake engine runs (and finalizes) everything queued."""
    loop = WorkerLoop(FakeEngine(), records, queue, store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    while loop.run_once():
        pass
    return loop


def settled_batch(client: TestClient, file_id: str, **extra: Any) -> dict[str, Any]:
    """A queued batch whose estimate is written: the estimate's update locks the job row,
    which a finalization claim (SKIP LOCKED) would pass over."""
    batch = create_batch(client, file_id, **extra)
    wait_for_estimate(client, batch["id"])
    return batch


def upload_with(client: TestClient, **fields: str) -> Any:
    return client.post(
        "/v1/files",
        files={"file": ("in.jsonl", jsonl([completion_line("a", "x")]))},
        data={"purpose": "batch", **fields},
    )


def assert_gone(client: TestClient, store: ObjectStore, file_id: str) -> None:
    assert not store.exists(f"files/{file_id}")
    assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert client.get(f"/v1/files/{file_id}/content").status_code == 404
    assert file_id not in [f["id"] for f in client.get("/v1/files").json()["data"]]


def test_an_upload_with_expires_after_shows_expires_at_everywhere(client: TestClient) -> None:
    response = upload_with(client, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"})
    assert response.status_code == 200, response.text
    uploaded = response.json()
    assert uploaded["expires_at"] == uploaded["created_at"] + 7200
    assert client.get(f"/v1/files/{uploaded['id']}").json()["expires_at"] == uploaded["expires_at"]
    [listed] = client.get("/v1/files").json()["data"]
    assert listed["expires_at"] == uploaded["expires_at"]
    FileObject.model_validate(uploaded)  # the openai SDK's own type


def test_the_openai_sdk_sends_expires_after_and_output_expires_after(app: FastAPI, records: Records) -> None:
    _, secret = create_key(records, "carol")
    sdk = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=TestClient(app), max_retries=0)
    uploaded = sdk.files.create(
        file=("in.jsonl", jsonl([completion_line("a", "x")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert isinstance(uploaded, FileObject) and uploaded.expires_at == uploaded.created_at + 3600
    assert sdk.files.retrieve(uploaded.id).expires_at == uploaded.expires_at
    batch = sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 2 * DAY},
    )
    assert isinstance(batch, Batch)
    assert records.get_job(batch.id).output_expires_after_seconds == 2 * DAY


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ],
)
def test_an_upload_with_expires_after_outside_openais_limits_is_refused_naming_the_param(
    client: TestClient, store: ObjectStore, fields: dict[str, str], param: str
) -> None:
    response = upload_with(client, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")
    assert error["message"].startswith(param)
    assert client.get("/v1/files").json()["data"] == []
    assert list(store.list_keys("files/")) == []  # the file part, already stored, is removed


def test_the_expiry_fields_may_come_after_the_file(client: TestClient) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        + jsonl([completion_line("a", "x")])
        + b'\r\n--b\r\nContent-Disposition: form-data; name="expires_after[seconds]"\r\n\r\n4000'
        + b'\r\n--b\r\nContent-Disposition: form-data; name="expires_after[anchor]"\r\n\r\ncreated_at'
        + b"\r\n--b--\r\n"
    )
    response = client.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 200, response.text
    assert response.json()["expires_at"] == response.json()["created_at"] + 4000


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 31 * DAY}, "output_expires_after.seconds"),
        ({"anchor": "completed_at", "seconds": DAY}, "output_expires_after.anchor"),
        ({"seconds": DAY}, "output_expires_after.anchor"),
    ],
)
def test_a_batch_with_output_expires_after_outside_openais_limits_is_refused_naming_the_param(
    client: TestClient, policy: dict[str, Any], param: str
) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "output_expires_after": policy}
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert client.get("/v1/batches").json()["data"] == []


def test_files_without_a_policy_expire_after_file_retention_days(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.file_retention_days == 30  # the default: OpenAI's for batch files
    uploaded = upload(client, jsonl([completion_line("a", "x"), completion_line("b", FakeEngine.REFUSED.decode())]))
    assert uploaded["expires_at"] == uploaded["created_at"] + 30 * DAY
    kept = settled_batch(client, uploaded["id"])
    timed = settled_batch(client, uploaded["id"], output_expires_after={"anchor": "created_at", "seconds": 3 * 3600})
    run_jobs(records, queue, store)
    for batch_id, seconds in ((kept["id"], 30 * DAY), (timed["id"], 3 * 3600)):
        done = client.get(f"/v1/batches/{batch_id}").json()
        assert done["status"] == "completed", done
        for file_id in (done["output_file_id"], done["error_file_id"]):  # anchored at the file's own creation
            shown = client.get(f"/v1/files/{file_id}").json()
            assert shown["expires_at"] == shown["created_at"] + seconds, shown

    settings.file_retention_days = 0  # kept until deleted
    forever = upload(client, jsonl([completion_line("a", "x")]))
    assert forever["expires_at"] is None
    batch = settled_batch(client, forever["id"])
    run_jobs(records, queue, store)
    output_id = client.get(f"/v1/batches/{batch['id']}").json()["output_file_id"]
    assert client.get(f"/v1/files/{output_id}").json()["expires_at"] is None


@both_stores
def test_an_expired_file_is_deleted_by_a_sweep(
    client: TestClient, db: Database, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    gone = upload(client, jsonl([completion_line("a", "x")]))["id"]
    kept = upload(client, jsonl([completion_line("b", "y")]))["id"]
    run_sweep(records, queue, store)
    assert store.exists(f"files/{gone}")  # not yet expired

    expire(db, [gone])
    assert client.post("/v1/batches", json={"input_file_id": gone, "endpoint": "/v1/completions"}).status_code == 404
    run_sweep(records, queue, store)
    assert_gone(client, store, gone)
    assert client.delete(f"/v1/files/{gone}").status_code == 404
    assert client.get(f"/v1/files/{kept}").status_code == 200 and store.exists(f"files/{kept}")


def test_an_expired_input_of_a_queued_or_running_job_is_kept_until_the_job_ends(
    client: TestClient, db: Database, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    file_id = upload(client, jsonl([completion_line(f"r{i}", f"line {i}") for i in range(4)]))["id"]
    batch = settled_batch(client, file_id, batch_size=2)
    expire(db, [file_id])
    run_sweep(records, queue, store)  # queued
    assert client.get(f"/v1/files/{file_id}").status_code == 200 and store.exists(f"files/{file_id}")

    loop = WorkerLoop(FakeEngine(), records, queue, store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    shard = queue.claim_shard(loop.worker_id, "demo-llama", 60)
    assert shard is not None and records.get_job(batch["id"]).status == JobStatus.IN_PROGRESS
    run_sweep(records, queue, store)  # running
    assert client.get(f"/v1/files/{file_id}").status_code == 200 and store.exists(f"files/{file_id}")

    loop.runner.run(shard)  # reads the input it kept
    queue.finish_shard(shard, loop.worker_id, stopped=False)
    run_sweep(records, queue, store)  # finalizes the job (reading the input once more), then deletes the input
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 4
    assert_gone(client, store, file_id)


@both_stores
def test_an_ended_jobs_expired_output_and_error_files_go_with_its_parts(
    client: TestClient, db: Database, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    rows = [completion_line(f"r{i}", FakeEngine.REFUSED.decode() if i == 1 else f"line {i}") for i in range(4)]
    input_id = upload(client, jsonl(rows))["id"]
    batch = settled_batch(client, input_id, batch_size=2, pack_by_length=False)
    run_jobs(records, queue, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["failed"] == 1
    assert store.exists(part_key(batch["id"], 0, 0, "err"))
    assert client.get(f"/v1/batches/{batch['id']}/results").status_code == 200

    expire(db, [done["output_file_id"], done["error_file_id"]])
    run_sweep(records, queue, store)
    assert_gone(client, store, done["output_file_id"])
    assert_gone(client, store, done["error_file_id"])
    assert list(store.list_keys(job_prefix(batch["id"]))) == []  # parts and stats.json
    assert client.get(f"/v1/batches/{batch['id']}/results").status_code == 404
    assert client.get(f"/v1/batches/{batch['id']}/stats").json()["completion_tokens"] > 0  # still in Postgres
    assert client.get(f"/v1/files/{input_id}").status_code == 200  # not expired: kept


@both_stores
def test_deleting_an_ended_jobs_output_file_takes_its_parts_too(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    batch = settled_batch(client, upload(client, jsonl([completion_line("a", "x")]))["id"])
    run_jobs(records, queue, store)
    output_id = client.get(f"/v1/batches/{batch['id']}").json()["output_file_id"]
    assert list(store.list_keys(job_prefix(batch["id"])))
    assert client.delete(f"/v1/files/{output_id}").status_code == 200
    assert list(store.list_keys(job_prefix(batch["id"]))) == []


@both_stores
def test_storage_does_not_grow_without_bound(
    client: TestClient, db: Database, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    before = sorted(store.list_keys(""))
    for round_ in range(3):
        rows = [completion_line(f"r{i}", FakeEngine.REFUSED.decode() if i == 2 else f"{round_} {i}") for i in range(5)]
        file_id = upload(client, jsonl(rows))["id"]
        retry_parent = settled_batch(client, file_id, batch_size=2)
        run_jobs(records, queue, store)
        client.post(f"/v1/batches/{retry_parent['id']}/retry").raise_for_status()  # a retry file too
        run_jobs(records, queue, store)
        assert len(list(store.list_keys(""))) > len(before)
        with db.engine.begin() as conn:
            live = list(conn.execute(text("SELECT id FROM files WHERE deleted_at IS NULL")).scalars())
        expire(db, live)
        run_sweep(records, queue, store)
        assert sorted(store.list_keys("")) == before, round_
        assert client.get("/v1/files").json()["data"] == []


def test_a_sweep_takes_only_files_no_other_sweep_holds(
    client: TestClient, db: Database, records: Records, store: ObjectStore
) -> None:
    ids = [upload(client, jsonl([completion_line("a", str(i))]))["id"] for i in range(3)]
    expire(db, ids)
    seen: list[str] = []
    concurrent: list[list[str]] = []

    def remove(expired: ExpiredFile) -> bool:
        if not concurrent:  # another API process sweeps while this one holds the files
            concurrent.append(delete_expired(records, store))
        seen.append(expired.id)
        store.delete(expired.storage_key)
        return True

    assert sorted(delete_expired_files(db, 2, remove)) == sorted(seen) and len(seen) == 2
    assert len(concurrent[0]) == 1 and concurrent[0][0] not in seen  # it took only the third
    assert sorted(seen + concurrent[0]) == sorted(ids)
    assert delete_expired(records, store) == []


def test_a_job_is_never_created_on_a_file_a_sweep_deleted_meanwhile(
    client: TestClient, db: Database, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    source = records.get_file(file_id)  # read before the sweep, as create_job does
    expire(db, [file_id])
    assert delete_expired(records, store) == [file_id]
    created = now()
    job = Job(
        id=new_id("batch_"),
        owner="alice",
        input_file_id=source.id,
        endpoint="/v1/completions",
        completion_window="24h",
        model="demo-llama",
        batch_size=1,
        status=JobStatus.QUEUED,
        sampling_defaults=JobDefaults(max_tokens=16),
        request_total=1,
        created_at=created,
        expires_at=created,
    )
    with pytest.raises(NotFound):
        queue.create_job(job, 10)
    assert client.get("/v1/batches").json()["data"] == []


@both_stores
def test_delete_prefix_deletes_exactly_the_objects_under_the_prefix(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.core.storage.S3_DELETE_BATCH", 2)  # S3: several DeleteObjects calls
    doomed = [f"batches/job-1/parts/{i:06d}-000000.out.jsonl" for i in range(5)] + ["batches/job-1/stats.json"]
    kept = ["batches/job-10/stats.json", "batches/job-2/parts/000000-000000.out.jsonl", "files/file-1"]
    for key in doomed + kept:
        store.put_bytes(key, b"x\n")
    assert sorted(store.list_keys("batches/job-1/")) == sorted(doomed)
    assert sorted(store.list_keys("batches/job-1")) == sorted(doomed + kept[:1])  # a plain prefix, not a folder

    assert store.delete_prefix("batches/job-1/") == len(doomed)
    assert sorted(store.list_keys("")) == sorted(kept)
    assert store.delete_prefix("batches/job-1/") == 0
