"""The Uploads API in OpenAI's shapes, on both stores: parts in any order joined in the
order named, a line broken across parts checked as one line, the byte count and MD5
checked, parts re-sent under new ids, cancel and expiry removing the parts, owners kept
apart; and imports from object storage under the allowed prefixes only."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import boto3
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI
from openai.types import Upload
from sqlalchemy import text

from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from app.data.uploads import Uploads
from app.jobs.upload_parts import sweep_uploads
from tests.helpers import both_stores, completion_line, create_batch, jsonl
from tests.integration.conftest import make_settings

pytestmark = both_stores
SOURCE_PREFIX = "in/"
PART_LIMIT = 1 << 20


@pytest.fixture
def source_bucket(s3_endpoint: str) -> str:
    """A bucket of the organisation's own, apart from the service's storage."""
    bucket = f"source-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def settings(database_url: str, store: ObjectStore, s3_endpoint: str, source_bucket: str) -> Settings:
    return make_settings(
        database_url,
        store,
        s3_endpoint_url=s3_endpoint,
        upload_part_max_bytes=PART_LIMIT,
        import_allowed_prefixes=[f"s3://{source_bucket}/{SOURCE_PREFIX}"],
    )


def rows(count: int, start: int = 0) -> bytes:
    return jsonl([completion_line(f"r{i}", f"prompt number {i}") for i in range(start, start + count)])


def create(client: TestClient, data: bytes, **extra: Any) -> dict[str, Any]:
    body = {"bytes": len(data), "filename": "big.jsonl", "purpose": "batch", "mime_type": "application/jsonl", **extra}
    response = client.post("/v1/uploads", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def add_part(client: TestClient, upload_id: str, data: bytes) -> str:
    response = client.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("blob", data)})
    assert response.status_code == 200, response.text
    part = response.json()
    assert part["object"] == "upload.part" and part["upload_id"] == upload_id
    return str(part["id"])


def cut(data: bytes, pieces: int) -> list[bytes]:
    step = -(-len(data) // pieces)
    return [data[i : i + step] for i in range(0, len(data), step)]


def stored_parts(store: ObjectStore, upload_id: str) -> list[str]:
    return list(store.list_keys(f"uploads/{upload_id}/"))


def test_parts_sent_out_of_order_complete_in_the_order_named(client: TestClient, store: ObjectStore) -> None:
    data = rows(3000)
    upload = create(client, data)
    assert upload["object"] == "upload" and upload["status"] == "pending"
    assert upload["expires_at"] == upload["created_at"] + 3600
    pieces = cut(data, 4)
    ids = {index: add_part(client, upload["id"], piece) for index, piece in reversed(list(enumerate(pieces)))}

    done = client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [ids[i] for i in range(4)]})

    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["file"]["object"] == "file"
    file = body["file"]
    assert (file["bytes"], file["lines"], file["filename"]) == (len(data), 3000, "big.jsonl")
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert client.get(f"/v1/files/{file['id']}/content").content == data
    assert stored_parts(store, upload["id"]) == []
    assert client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": []}).json()["file"] == file
    assert create_batch(client, file["id"])["status"] == "validating"


def test_a_line_broken_across_two_parts_is_checked_as_one_line(client: TestClient) -> None:
    data = rows(10)
    middle = data.index(b"prompt number 5") + 3  # inside line 6
    upload = create(client, data)
    first, second = add_part(client, upload["id"], data[:middle]), add_part(client, upload["id"], data[middle:])

    file = client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [first, second]}).json()["file"]

    assert file["lines"] == 10
    assert create_batch(client, file["id"])["status"] == "validating"  # no line was broken


def test_a_line_too_long_across_parts_is_refused_naming_its_line(client: TestClient, app: FastAPI) -> None:
    app.state.settings = app.state.settings.model_copy(update={"max_line_bytes": 1000})
    data = rows(3) + jsonl([completion_line("long", "y" * 1500)])
    upload = create(client, data)
    ids = [add_part(client, upload["id"], piece) for piece in cut(data, 3)]

    refused = client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": ids})

    assert refused.status_code == 413 and refused.json()["error"]["code"] == "line_too_long"
    assert "Line 4" in refused.json()["error"]["message"]


def test_a_wrong_byte_count_or_md5_is_refused_and_the_upload_stays_pending(
    client: TestClient, store: ObjectStore
) -> None:
    data = rows(100)
    upload = create(client, data)
    first, second = (add_part(client, upload["id"], piece) for piece in cut(data, 2))
    url = f"/v1/uploads/{upload['id']}/complete"

    short = client.post(url, json={"part_ids": [first]})
    assert short.status_code == 400 and short.json()["error"]["code"] == "bytes_mismatch"
    assert short.json()["error"]["param"] == "part_ids"
    wrong = client.post(url, json={"part_ids": [first, second], "md5": hashlib.md5(b"other").hexdigest()})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "md5_mismatch"
    assert wrong.json()["error"]["param"] == "md5"
    unknown = client.post(url, json={"part_ids": [first, "part_nope"]})
    assert unknown.status_code == 400 and "part_nope" in unknown.json()["error"]["message"]
    assert client.get(f"/v1/uploads/{upload['id']}").json()["status"] == "pending"
    assert len(stored_parts(store, upload["id"])) == 2
    assert list(store.list_keys("files/")) == []  # nothing joined for a refused completion

    right = client.post(url, json={"part_ids": [first, second], "md5": hashlib.md5(data).hexdigest()})
    assert right.status_code == 200 and right.json()["file"]["bytes"] == len(data)


def test_a_part_sent_again_replaces_the_failed_one_which_is_removed(client: TestClient, store: ObjectStore) -> None:
    data = rows(100)
    upload = create(client, data)
    first, second = cut(data, 2)
    kept = add_part(client, upload["id"], first)
    failed = add_part(client, upload["id"], second[:-5])  # the client saw it fail, say: it sends it again
    again = add_part(client, upload["id"], second)
    assert failed != again

    done = client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [kept, again]})

    assert done.status_code == 200 and client.get(f"/v1/files/{done.json()['file']['id']}/content").content == data
    assert stored_parts(store, upload["id"]) == []
    late = client.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("blob", b"x")})
    assert late.status_code == 409 and late.json()["error"]["code"] == "upload_completed"


def test_a_part_over_the_limit_is_refused_and_leaves_nothing(client: TestClient, store: ObjectStore) -> None:
    upload = create(client, b"x" * (2 * PART_LIMIT))
    refused = client.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("blob", b"x" * (PART_LIMIT + 1))})
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "data"
    assert stored_parts(store, upload["id"]) == []


def test_parts_past_the_declared_size_are_refused_naming_bytes_and_nothing_is_stored_for_them(
    app: FastAPI, records: Records, store: ObjectStore
) -> None:
    """OpenAI's bound: an Upload takes parts up to its `bytes` (here plus one part's slack, so
    a failed part can be sent again), not 24 MiB for a 10-byte upload."""
    _, secret = create_key(records, "sdk")
    sdk = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=TestClient(app), max_retries=0)
    upload = sdk.uploads.create(bytes=10, filename="tiny.jsonl", mime_type="application/jsonl", purpose="batch")
    first = sdk.uploads.parts.create(upload_id=upload.id, data=b"x" * 8)
    again = sdk.uploads.parts.create(upload_id=upload.id, data=b"y" * 8)  # within the slack: 16 of 20
    with pytest.raises(BadRequestError) as refused:
        sdk.uploads.parts.create(upload_id=upload.id, data=b"z" * 8)  # 24: past 10 + 10
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "bytes" and "may hold 4 more bytes" in error["message"]
    assert sorted(key.rsplit("/", 1)[-1] for key in stored_parts(store, upload.id)) == sorted([first.id, again.id])
    last = sdk.uploads.parts.create(upload_id=upload.id, data=b"w" * 4)  # 20: exactly the bound
    with pytest.raises(BadRequestError) as full:
        sdk.uploads.parts.create(upload_id=upload.id, data=b"v")  # no room at all: refused before the body
    assert isinstance(full.value.body, dict) and full.value.body["param"] == "bytes"
    assert "declared 10 bytes; its parts hold 20" in full.value.body["message"]
    assert len(stored_parts(store, upload.id)) == 3
    with pytest.raises(BadRequestError, match="hold 12 bytes; the upload was created for 10"):
        sdk.uploads.complete(upload_id=upload.id, part_ids=[first.id, last.id])  # the parts must add up


def test_a_part_that_grows_past_the_declared_size_while_streaming_is_refused_and_removed(
    client: TestClient, store: ObjectStore
) -> None:
    upload = create(client, b"x" * 100)
    add_part(client, upload["id"], b"x" * 150)  # 150 of 100 + 100
    body = b"x" * 60  # 210: past 200, though under the part limit
    refused = client.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("blob", body)})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "bytes"
    assert len(stored_parts(store, upload["id"])) == 1


def test_cancel_removes_the_parts_and_takes_no_more(client: TestClient, store: ObjectStore) -> None:
    upload = create(client, rows(10))
    add_part(client, upload["id"], rows(5))
    cancelled = client.post(f"/v1/uploads/{upload['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert stored_parts(store, upload["id"]) == []
    late = client.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("blob", b"x")})
    assert late.status_code == 409 and late.json()["error"]["code"] == "upload_cancelled"
    assert client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": ["x"]}).status_code == 409


def test_an_expired_uploads_parts_are_gone_after_a_sweep(client: TestClient, store: ObjectStore, db: Database) -> None:
    data = rows(20)
    upload = create(client, data)
    part = add_part(client, upload["id"], data)
    with db.engine.begin() as conn:  # an hour passes
        conn.execute(text("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = :id"), upload)
    assert client.get(f"/v1/uploads/{upload['id']}").json()["status"] == "expired"  # shown before any sweep
    assert stored_parts(store, upload["id"]) != []

    assert sweep_uploads(Uploads(db), store) == [upload["id"]]

    assert stored_parts(store, upload["id"]) == []
    assert client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [part]}).status_code == 409
    assert sweep_uploads(Uploads(db), store) == []  # done once


def test_another_owner_sees_no_upload(client: TestClient, other_client: TestClient) -> None:
    upload = create(client, rows(2))
    path = f"/v1/uploads/{upload['id']}"
    assert other_client.get(path).status_code == 404
    assert other_client.post(f"{path}/parts", files={"data": ("blob", rows(2))}).status_code == 404
    assert other_client.post(f"{path}/complete", json={"part_ids": ["p"]}).status_code == 404
    assert other_client.post(f"{path}/cancel").status_code == 404
    anonymous = TestClient(client.app).post(f"{path}/parts", files={"data": ("blob", rows(2))})
    assert anonymous.status_code == 401


def test_the_openai_sdks_chunked_upload_works_unchanged(app: FastAPI, records: Records, store: ObjectStore) -> None:
    _, secret = create_key(records, "sdk")
    sdk = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=TestClient(app), max_retries=0)
    data = rows(2000)
    upload = sdk.uploads.upload_file_chunked(
        file=data,
        filename="chunked.jsonl",
        bytes=len(data),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=len(data) // 3 + 1,
        md5=hashlib.md5(data).hexdigest(),
    )
    assert isinstance(upload, Upload) and upload.status == "completed" and upload.file is not None
    assert upload.file.bytes == len(data) and sdk.files.content(upload.file.id).content == data
    assert sdk.uploads.cancel(sdk.uploads.create(bytes=1, filename="x", mime_type="text/jsonl", purpose="batch").id)


def test_an_import_from_an_allowed_prefix_makes_a_file(
    client: TestClient, source_bucket: str, s3_endpoint: str, store: ObjectStore
) -> None:
    data = rows(500)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=source_bucket, Key=f"{SOURCE_PREFIX}prompts.jsonl", Body=data)

    made = client.post("/v1/files", json={"url": f"s3://{source_bucket}/{SOURCE_PREFIX}prompts.jsonl"})

    assert made.status_code == 200, made.text
    file = made.json()
    assert (file["bytes"], file["lines"], file["filename"]) == (len(data), 500, "prompts.jsonl")
    assert client.get(f"/v1/files/{file['id']}/content").content == data
    assert create_batch(client, file["id"])["status"] == "validating"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("s3://{bucket}/out/prompts.jsonl", "IMPORT_ALLOWED_PREFIXES"),
        ("s3://{bucket}-other/in/prompts.jsonl", "IMPORT_ALLOWED_PREFIXES"),
        ("https://example.com/in/prompts.jsonl", "s3://bucket/key"),
        ("s3://{bucket}/in/", "s3://bucket/key"),
        ("s3://{bucket}/in/missing.jsonl", "NoSuchKey"),
    ],
)
def test_an_import_outside_the_rules_is_refused_naming_the_rule(
    client: TestClient, source_bucket: str, url: str, rule: str
) -> None:
    refused = client.post("/v1/files", json={"url": url.format(bucket=source_bucket)})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "url" and rule in error["message"]


def test_imports_are_off_by_default(client: TestClient, app: FastAPI) -> None:
    app.state.settings = app.state.settings.model_copy(update={"import_allowed_prefixes": []})
    refused = client.post("/v1/files", json={"url": "s3://any/thing.jsonl"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "import_not_allowed"
