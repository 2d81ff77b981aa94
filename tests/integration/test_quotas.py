"""Limits per owner: one key cannot fill the storage or the queue for everyone. Quotas on
stored bytes, batches not yet ended and queued prompt tokens, each refused before anything
is stored or queued, per owner; an admin's override; the use figures; OpenAI's shapes
through the SDK where the surface is OpenAI's."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI, RateLimitError

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from app.tools import cli
from tests.helpers import completion_line, create_batch, jsonl, upload
from tests.integration.conftest import make_settings
from tests.integration.test_admin import login

STORED_BYTES = 4500  # two files of ~1.9 KB fit (a third's form, ~2.2 KB, does not)
OPEN_BATCHES = 3
QUEUED_TOKENS = 600  # a file's tokens count as a quarter of its bytes until its estimate is in


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(
        database_url,
        store,
        quota_stored_bytes=STORED_BYTES,
        quota_open_batches=OPEN_BATCHES,
        quota_queued_prompt_tokens=QUEUED_TOKENS,
    )


def sdk(app: FastAPI, records: Records, owner: str, admin: bool = False) -> OpenAI:
    _, secret = create_key(records, owner, admin=admin)
    return OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=TestClient(app), max_retries=0)


def lines(count: int, prefix: str = "q") -> bytes:
    return jsonl([completion_line(f"{prefix}{i}", f"prompt {i}") for i in range(count)])


def test_an_owner_over_its_storage_quota_is_refused_and_another_is_not(
    app: FastAPI, records: Records, client: TestClient, other_client: TestClient
) -> None:
    alice = sdk(app, records, "alice")
    data = lines(20)  # about 1.6 KB
    alice.files.create(file=("a.jsonl", data), purpose="batch")
    alice.files.create(file=("b.jsonl", data), purpose="batch")
    with pytest.raises(RateLimitError) as refused:
        alice.files.create(file=("c.jsonl", data), purpose="batch")
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota"
    assert f"may keep {STORED_BYTES} bytes and keeps {2 * len(data)}" in error["message"]
    assert "Delete files" in error["message"]
    assert len(alice.files.list().data) == 2  # nothing stored for it
    with pytest.raises(RateLimitError):  # an Upload declares its size: refused at creation
        alice.uploads.create(bytes=len(data), filename="d.jsonl", mime_type="application/jsonl", purpose="batch")
    assert upload(other_client, data)["bytes"] == len(data)  # bob's storage is his own


def test_an_owner_over_its_batch_quota_is_refused_until_one_ends(client: TestClient, other_client: TestClient) -> None:
    file_id = upload(client, lines(2))["id"]
    batches = [create_batch(client, file_id) for _ in range(OPEN_BATCHES)]
    refused = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert f"may have {OPEN_BATCHES} batches not yet ended and has {OPEN_BATCHES}" in refused.json()["error"]["message"]
    assert len(client.get("/v1/batches").json()["data"]) == OPEN_BATCHES  # nothing queued for it
    assert create_batch(other_client, upload(other_client, lines(2))["id"])["status"] == "validating"
    client.post(f"/v1/batches/{batches[0]['id']}/cancel")
    cancelled = client.get(f"/v1/batches/{batches[0]['id']}").json()
    assert cancelled["status"] in ("cancelling", "cancelled")


def test_a_batch_past_the_queued_token_quota_fails_at_once_with_token_limit_exceeded(
    app: FastAPI, records: Records
) -> None:
    alice = sdk(app, records, "alice")
    small = alice.files.create(file=("s.jsonl", lines(20)), purpose="batch")  # ~400 tokens counted
    first = alice.batches.create(input_file_id=small.id, endpoint="/v1/completions", completion_window="24h")
    assert first.status != "failed"
    second = alice.batches.create(input_file_id=small.id, endpoint="/v1/completions", completion_window="24h")
    assert second.status == "failed" and second.errors is not None and second.errors.data
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert "may have 600 prompt tokens queued" in (second.errors.data[0].message or "")
    bob = sdk(app, records, "bob")
    theirs = bob.files.create(file=("s.jsonl", lines(20)), purpose="batch")
    assert bob.batches.create(input_file_id=theirs.id, endpoint="/v1/completions", completion_window="24h").status != (
        "failed"
    )


def test_an_admin_override_takes_effect_and_the_use_figures_match(
    app: FastAPI, records: Records, client: TestClient, admin_client: TestClient
) -> None:
    data = lines(20)
    upload(client, data)
    upload(client, data)
    assert client.post("/v1/files", files={"file": ("c.jsonl", data)}, data={"purpose": "batch"}).status_code == 429

    refused = client.post("/v1/limits", json={"owner": "alice", "stored_bytes": 10**6})
    assert refused.status_code == 403  # only an admin raises a quota
    raised = admin_client.post("/v1/limits", json={"owner": "alice", "stored_bytes": 10**6})
    assert raised.status_code == 200 and raised.json()["stored_bytes"]["limit"] == 10**6
    third = upload(client, data)
    batch = create_batch(client, third["id"])

    mine = client.get("/v1/limits").json()
    assert mine["owner"] == "alice"
    assert mine["stored_bytes"] == {"used": 3 * len(data), "limit": 10**6}
    assert mine["open_batches"] == {"used": 1, "limit": OPEN_BATCHES}
    assert mine["queued_prompt_tokens"]["limit"] == QUEUED_TOKENS
    assert mine["queued_prompt_tokens"]["used_by_model"] == {batch["model"]: len(data) // 4}
    assert client.get("/v1/limits", params={"owner": "bob"}).status_code == 403
    assert admin_client.get("/v1/limits", params={"owner": "alice"}).json()["stored_bytes"]["limit"] == 10**6

    _, secret = create_key(records, "ops-browser", admin=True)
    browser, _ = login(app, secret)
    row = browser.get("/admin/owners").text.split('data-owner="alice"')[1].split("</tr>")[0]
    assert f'<td class="num stored">{3 * len(data)}</td><td class="num">{10**6}</td>' in row
    assert '<td class="num batches">1</td>' in row

    back = admin_client.post("/v1/limits", json={"owner": "alice", "stored_bytes": None})  # the default again
    assert back.json()["stored_bytes"]["limit"] == STORED_BYTES


def test_the_cli_reads_and_overrides_limits(
    app: FastAPI, records: Records, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-batch limits` as an admin runs it, against this app (its HTTP client bound to it)."""
    _, secret = create_key(records, "ops", admin=True)
    monkeypatch.setattr(
        cli.httpx, "Client", lambda base_url, headers, timeout: TestClient(app, base_url, headers=headers)
    )
    args = ["--url", "http://testserver", "--api-key", secret, "limits"]
    assert cli.main([*args, "--owner", "dave", "--open-batches", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["open_batches"] == {"used": 0, "limit": 7}
    assert cli.main([*args, "--owner", "dave"]) == 0
    assert json.loads(capsys.readouterr().out)["open_batches"]["limit"] == 7
    assert cli.main([*args, "--owner", "dave", "--open-batches", "default"]) == 0
    assert json.loads(capsys.readouterr().out)["open_batches"]["limit"] == OPEN_BATCHES
