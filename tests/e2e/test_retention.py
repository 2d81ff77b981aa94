"""File retention through the official `openai` SDK against the API as a process, with S3
over HTTP (moto): an upload's `expires_after` becomes its `expires_at`, and once that has
passed the API's sweeper deletes the file (row and S3 object), except while a batch that
has not ended reads it; such an input cannot be deleted by hand either (409)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest
from openai import ConflictError, NotFoundError, OpenAI, omit
from openai.types import FileObject
from sqlalchemy import text

from app.core.database import Database
from app.core.storage import S3Store
from tests.e2e.conftest import Service
from tests.helpers import completion_line, jsonl

SWEEP_SECONDS = 0.5
HOUR = 3600  # the shortest expires_after OpenAI takes


@pytest.fixture
def api(service: Service, s3_store: S3Store, s3_endpoint: str) -> Service:
    """The API alone (no worker: a batch stays queued), storing in a moto bucket over HTTP."""
    service.env.update(
        STORAGE_URL=f"s3://{s3_store.bucket}/{s3_store.prefix}",
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        SWEEP_SECONDS=str(SWEEP_SECONDS),
    )
    service.start_api()
    return service


def sdk(service: Service) -> OpenAI:
    return OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("keeper"), max_retries=0)


def upload(client: OpenAI, name: str, expiring: bool = True) -> FileObject:
    return client.files.create(
        file=(f"{name}.jsonl", jsonl([completion_line(name, f"say {name}", max_tokens=2)])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": HOUR} if expiring else omit,
    )


def expire(service: Service, file_ids: Iterable[str]) -> None:
    """Time passes: the files' expiry was a second ago."""
    db = Database(service.env["DATABASE_URL"])
    try:
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY(:ids)"),
                {"ids": list(file_ids)},
            )
    finally:
        db.dispose()


def is_gone(client: OpenAI, file_id: str) -> bool:
    try:
        client.files.retrieve(file_id)
    except NotFoundError:
        return True
    return False


def eventually(check: Callable[[], bool], timeout: float = 20 * SWEEP_SECONDS + 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.1)


def test_an_expired_upload_is_deleted_by_the_sweeper_from_postgres_and_s3(api: Service, s3_store: S3Store) -> None:
    client = sdk(api)
    doomed = upload(client, "doomed")
    kept = upload(client, "kept", expiring=False)
    assert doomed.expires_at == doomed.created_at + HOUR
    assert client.files.retrieve(doomed.id).expires_at == doomed.expires_at
    assert kept.expires_at is not None and kept.expires_at > doomed.expires_at  # FILE_RETENTION_DAYS
    time.sleep(3 * SWEEP_SECONDS)  # sweeps pass: nothing has expired yet
    assert not is_gone(client, doomed.id) and s3_store.exists(f"files/{doomed.id}")

    expire(api, [doomed.id])
    eventually(lambda: is_gone(client, doomed.id))
    assert not s3_store.exists(f"files/{doomed.id}")
    with pytest.raises(NotFoundError):
        client.files.content(doomed.id)
    assert [f.id for f in client.files.list()] == [kept.id]
    assert client.files.content(kept.id).text and s3_store.exists(f"files/{kept.id}")


def test_an_expired_input_of_a_live_batch_is_kept_until_the_batch_ends(api: Service, s3_store: S3Store) -> None:
    client = sdk(api)
    source = upload(client, "source")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    assert batch.status in ("validating", "in_progress")  # queued: no worker runs it
    with pytest.raises(ConflictError) as refused:
        client.files.delete(source.id)
    assert refused.value.status_code == 409
    assert not is_gone(client, source.id)

    witness = upload(client, "witness")  # expires with it and is read by no batch
    expire(api, [source.id, witness.id])
    eventually(lambda: is_gone(client, witness.id))  # a sweep has run since both expired
    time.sleep(2 * SWEEP_SECONDS)  # and more
    assert client.batches.retrieve(batch.id).status in ("validating", "in_progress")
    assert client.files.retrieve(source.id).id == source.id and s3_store.exists(f"files/{source.id}")
    assert client.files.content(source.id).text.startswith('{"custom_id": "source"')

    client.batches.cancel(batch.id)
    eventually(lambda: client.batches.retrieve(batch.id).status == "cancelled")
    eventually(lambda: is_gone(client, source.id))  # the batch ended: the expired input goes
    assert not s3_store.exists(f"files/{source.id}")
