"""Long polls (`GET /v1/batches/{id}?wait=`): the answer comes when the batch's status
changes, woken by Postgres's notification (a trigger on `jobs`), and still comes when the
listening connection is lost; another owner's batch is refused at once; bad values are 400s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import status_changes
from app.api.status_changes import StatusChanges
from app.data.keys import create_key
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload

NEVER = 3600.0  # a waiter's own rechecks, pushed out of the test's reach
GIVE_UP_SECONDS = 30  # a poll not woken by then was not woken at all


def changes_of(app: FastAPI) -> StatusChanges:
    changes: StatusChanges | None = app.state.batch_views._changes
    assert changes is not None
    return changes


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def long_poll_while(app: FastAPI, secret: str, batch_id: str, change: Any) -> httpx.Response:
    """A `wait=60` poll of the batch; once it is waiting, `change()` runs in a thread."""
    changes = changes_of(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers={"Authorization": f"Bearer {secret}"}
    ) as http:
        poll = asyncio.create_task(http.get(f"/v1/batches/{batch_id}", params={"wait": 60}))
        await until(lambda: batch_id in changes._waiters, "the long poll never started waiting")
        await asyncio.to_thread(change)
        return await asyncio.wait_for(poll, GIVE_UP_SECONDS)


@pytest.fixture
def batch(client: TestClient) -> str:
    return str(create_batch(client, upload(client, jsonl([completion_line("a", "hello")]))["id"])["id"])


def test_a_long_poll_is_answered_when_the_status_changes(
    app: FastAPI, client: TestClient, records: Records, batch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_changes, "RECHECK_SECONDS", NEVER)
    monkeypatch.setattr(status_changes, "FALLBACK_SECONDS", NEVER)  # only a notification can wake it
    secret = create_key(records, "alice")[1]
    before = client.get(f"/v1/batches/{batch}").json()["status"]

    def cancel() -> None:
        assert client.post(f"/v1/batches/{batch}/cancel").status_code == 200

    answer = asyncio.run(long_poll_while(app, secret, batch, cancel))
    assert answer.status_code == 200, answer.text
    assert before in ("validating", "in_progress")
    assert answer.json()["status"] in ("cancelling", "cancelled")
    assert changes_of(app).listening


def test_a_long_poll_without_a_change_answers_the_same_batch_when_its_time_is_up(
    client: TestClient, batch: str
) -> None:
    before = client.get(f"/v1/batches/{batch}").json()
    held = client.get(f"/v1/batches/{batch}", params={"wait": 0.3})
    assert held.status_code == 200
    assert held.json()["id"] == batch and held.json()["status"] == before["status"]


def test_a_long_poll_sees_the_change_after_the_listening_connection_is_lost(
    app: FastAPI, client: TestClient, records: Records, batch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no notification to come, the waiter falls back to reading on its own."""
    monkeypatch.setattr(status_changes, "RECHECK_SECONDS", NEVER)
    secret = create_key(records, "alice")[1]
    assert client.get(f"/v1/batches/{batch}", params={"wait": 0.05}).status_code == 200  # the listener starts
    changes = changes_of(app)
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while not changes.listening:
        assert time.monotonic() < deadline, "the listener never connected"
        time.sleep(0.02)
    url = records.db.url

    def drop_listener_then_cancel() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            dropped = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
            ).fetchall()
        assert dropped, "no listening connection to drop"
        assert client.post(f"/v1/batches/{batch}/cancel").status_code == 200

    answer = asyncio.run(long_poll_while(app, secret, batch, drop_listener_then_cancel))
    assert answer.json()["status"] in ("cancelling", "cancelled")


def test_a_long_poll_of_another_owners_batch_is_refused_at_once(
    app: FastAPI, records: Records, batch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_changes, "RECHECK_SECONDS", NEVER)
    bob = create_key(records, "bob")[1]

    async def poll() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            request = http.get(f"/v1/batches/{batch}", params={"wait": 60}, headers={"Authorization": f"Bearer {bob}"})
            return await asyncio.wait_for(request, GIVE_UP_SECONDS)

    refused = asyncio.run(poll())
    assert refused.status_code == 404
    assert refused.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_a_wait_out_of_range_is_refused_in_openais_shape(client: TestClient, batch: str, wait: str) -> None:
    refused = client.get(f"/v1/batches/{batch}", params={"wait": wait})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "wait" and error["type"] == "invalid_request_error"
