"""Webhooks through the API: admins register an owner's endpoint, and each way a batch
ends reaches it as OpenAI's signed event, checked with the openai SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types.webhooks import DeletedWebhookEndpoint, WebhookEndpointList, WebhookEndpointWithSecret
from sqlalchemy import select, text

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.models import WebhookDelivery
from app.data.records import Records
from app.data.webhook_endpoints import new_secret
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, jsonl, run_worker_until_idle, upload, wait_for_status
from tests.integration.conftest import client_for, make_settings
from tests.receiver import Received, Receiver

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    """Fast everything: a sender that polls often and retries after 0.2 s (0.4 s at most)."""
    return make_settings(
        database_url,
        store,
        webhook_poll_seconds=0.05,
        webhook_first_retry_seconds=0.2,
        webhook_max_retry_seconds=0.4,
        sweep_seconds=0.2,
    )


@pytest.fixture
def receiver() -> Any:
    started = Receiver().start()
    yield started
    started.stop()


def register(admin: TestClient, url: str, owner: str, **extra: Any) -> dict[str, Any]:
    response = admin.post("/v1/webhook_endpoints", json={"url": url, "owner": owner, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def queued_batch(client: TestClient, lines: int = 3) -> str:
    rows = [completion_line(f"r{i}", f"line {i}") for i in range(lines)]
    return str(create_batch(client, upload(client, jsonl(rows))["id"])["id"])


def batch_failed_at_creation(client: TestClient) -> str:
    batch = create_batch(client, upload(client, b'{"custom_id": "a", "broken\n')["id"])
    assert batch["status"] == "failed"
    return str(batch["id"])


def unwrap(secret: str, got: Received) -> Any:
    return openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.unwrap(got.body, got.headers)


def deliveries(records: Records, job_id: str) -> list[WebhookDelivery]:
    with records.db.session() as session:
        query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
        return list(session.scalars(query))


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_completed_batch_s_event_arrives_signed_and_the_openai_sdk_verifies_it(
    client: TestClient,
    admin_client: TestClient,
    records: Records,
    receiver: Receiver,
    settings: Settings,
    store: ObjectStore,
) -> None:
    endpoint = register(admin_client, receiver.url, "alice", name="alice's hooks")
    assert WebhookEndpointWithSecret.model_validate(endpoint).signing_secret.startswith("whsec_")
    batch_id = queued_batch(client)

    run_worker_until_idle(FakeEngine(), settings, store)
    wait_for_status(client, batch_id, "completed")  # the worker or the API's sweeper finalizes it

    [got] = receiver.wait_for(1)
    event = unwrap(endpoint["signing_secret"], got)
    assert event.type == "batch.completed" and event.data.id == batch_id and event.object == "event"
    assert got.headers["webhook-id"] == event.id and event.id.startswith("evt_")
    assert got.headers["content-type"] == "application/json"
    eventually(lambda: deliveries(records, batch_id)[0].status == "delivered")
    [row] = deliveries(records, batch_id)
    assert (row.attempts, row.last_status_code, row.endpoint_id) == (1, 200, endpoint["id"])


def test_a_receiver_that_refuses_connections_then_answers_500_gets_the_event_once_it_is_up_with_every_attempt_recorded(
    client: TestClient, admin_client: TestClient, records: Records
) -> None:
    down = Receiver(answers=[500, 500])  # not started: its port refuses connections
    secret = new_secret()
    assert register(admin_client, down.url, "alice", secret=secret)["signing_secret"] == secret
    batch_id = batch_failed_at_creation(client)

    eventually(lambda: deliveries(records, batch_id)[0].attempts >= 3)
    refused = deliveries(records, batch_id)[0]
    assert refused.status == "pending" and refused.last_status_code is None
    assert refused.last_error is not None and "ConnectError" in refused.last_error

    down.start()
    try:
        [got] = down.wait_for(1)
        eventually(lambda: deliveries(records, batch_id)[0].status == "delivered")
    finally:
        down.stop()
    assert [r.answered for r in down.received] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in down.received} == {got.headers["webhook-id"]}  # one event, retried
    assert all(unwrap(secret, r).data.id == batch_id for r in down.received)  # each attempt signed afresh
    assert unwrap(secret, got).type == "batch.failed"
    [row] = deliveries(records, batch_id)
    assert row.attempts - len(down.received) >= refused.attempts >= 3  # every refusal counted, then 3 answers
    assert (row.last_status_code, row.last_error) == (200, None)


def test_a_cancelled_an_expired_and_a_batch_failed_at_creation_each_send_their_own_event(
    client: TestClient, admin_client: TestClient, records: Records, receiver: Receiver
) -> None:
    secret = register(admin_client, receiver.url, "alice")["signing_secret"]
    failed = batch_failed_at_creation(client)
    cancelled = queued_batch(client)
    client.post(f"/v1/batches/{cancelled}/cancel")
    expired = queued_batch(client)
    with records.db.session() as session:
        session.execute(
            text("UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": expired}
        )
    wait_for_status(client, cancelled, "cancelled")
    wait_for_status(client, expired, "expired")

    events = {(e.data.id, e.type) for e in (unwrap(secret, got) for got in receiver.wait_for(3))}
    assert events == {(failed, "batch.failed"), (cancelled, "batch.cancelled"), (expired, "batch.expired")}


def test_only_an_admin_key_registers_lists_or_deletes_webhook_endpoints(
    client: TestClient, admin_client: TestClient
) -> None:
    for response in (
        client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/x", "owner": "alice"}),
        client.get("/v1/webhook_endpoints"),
        client.delete("/v1/webhook_endpoints/whep_x"),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden" and response.json()["error"]["message"]
    assert TestClient(client.app).get("/v1/webhook_endpoints").status_code == 401

    for bad, param in [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://example.com/x", "secret": "hunter2"}, "secret"),
        ({"url": "http://example.com/x", "event_types": ["response.completed"]}, "event_types.0"),
    ]:
        response = admin_client.post("/v1/webhook_endpoints", json={"owner": "alice", **bad})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text

    alices = register(admin_client, "https://alice.example/hooks", "alice", event_types=["batch.completed"])
    bobs = register(admin_client, "https://bob.example/hooks", "bob")
    assert alices["event_types"] == ["batch.completed"] and len(bobs["event_types"]) == 4
    listed = admin_client.get("/v1/webhook_endpoints").json()
    assert [e.id for e in WebhookEndpointList.model_validate(listed).data] == [bobs["id"], alices["id"]]
    assert "signing_secret" not in str(listed).replace("signing_secret_hint", "")  # shown once, at creation
    assert bobs["signing_secret"] not in str(listed)
    only_alice = admin_client.get("/v1/webhook_endpoints", params={"owner": "alice"}).json()["data"]
    assert [e["id"] for e in only_alice] == [alices["id"]]
    page = admin_client.get("/v1/webhook_endpoints", params={"limit": 1}).json()
    assert page["has_more"] and page["last_id"] == bobs["id"]

    deleted = admin_client.delete(f"/v1/webhook_endpoints/{alices['id']}").json()
    assert DeletedWebhookEndpoint.model_validate(deleted).deleted
    assert [e["id"] for e in admin_client.get("/v1/webhook_endpoints").json()["data"]] == [bobs["id"]]
    assert admin_client.delete(f"/v1/webhook_endpoints/{alices['id']}").status_code == 404


def test_an_owner_s_endpoint_gets_only_that_owner_s_batches_events_of_the_types_it_asked_for(
    app: FastAPI, client: TestClient, other_client: TestClient, admin_client: TestClient, records: Records
) -> None:
    alices, bobs = Receiver().start(), Receiver().start()
    try:
        alice = register(admin_client, alices.url, "alice")
        bob = register(admin_client, bobs.url, "bob")
        completed_only = register(admin_client, alices.url, "alice", event_types=["batch.completed"])
        alice_batch = batch_failed_at_creation(client)
        bob_batch = batch_failed_at_creation(other_client)
        carol_batch = batch_failed_at_creation(client_for(app, records, "carol"))  # carol has no endpoint

        assert [unwrap(alice["signing_secret"], got).data.id for got in alices.wait_for(1)] == [alice_batch]
        assert [unwrap(bob["signing_secret"], got).data.id for got in bobs.wait_for(1)] == [bob_batch]
    finally:
        alices.stop()
        bobs.stop()
    assert [d.endpoint_id for d in deliveries(records, alice_batch)] == [alice["id"]]
    assert [d.endpoint_id for d in deliveries(records, bob_batch)] == [bob["id"]]
    assert deliveries(records, carol_batch) == []
    assert completed_only["id"] not in {d.endpoint_id for d in deliveries(records, alice_batch)}
