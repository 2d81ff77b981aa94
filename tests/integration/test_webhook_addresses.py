"""Webhook URLs that reach the service's own network (loopback, the metadata service of a
cloud host, private ranges) are refused at registration and again at each delivery."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.outbox import BATCH_EVENT_TYPES, Outbox
from app.data.records import Records
from app.data.webhook_endpoints import WebhookEndpoints
from tests.integration.conftest import make_settings
from tests.integration.test_webhook_outbox import add_job, deliveries, sender
from tests.receiver import Receiver

REFUSED = [
    "http://169.254.169.254/latest/meta-data/",  # link-local: a cloud's metadata service
    "http://127.0.0.1:6379/",  # loopback
    "http://0x7f000001/",  # loopback, spelled in hex
    "http://localhost:8000/hook",
    "http://10.1.2.3/hook",  # private
    "http://[::1]/hook",
    "http://[::ffff:192.168.0.1]/hook",  # private, as an IPv4-mapped IPv6 address
    "http://224.0.0.1/hook",  # multicast
    "http://0.0.0.0/hook",
]


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, webhook_allow_private_addresses=False)


@pytest.fixture
def admin(settings: Settings, records: Records) -> TestClient:
    app: FastAPI = create_app(settings)
    _, secret = create_key(records, "ops", admin=True)
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
        yield client  # type: ignore[misc]


@pytest.mark.parametrize("url", REFUSED)
def test_a_url_that_resolves_into_the_services_network_is_refused_at_registration(admin: TestClient, url: str) -> None:
    response = admin.post("/v1/webhook_endpoints", json={"url": url, "owner": "alice"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "url" and "WEBHOOK_ALLOW_PRIVATE_ADDRESSES" in error["message"]


def test_a_public_address_is_registered(admin: TestClient) -> None:
    response = admin.post("/v1/webhook_endpoints", json={"url": "https://93.184.215.14/hook", "owner": "alice"})
    assert response.status_code == 200, response.text


def test_a_delivery_to_an_address_refused_since_registration_is_not_sent_and_says_why(
    db: Database, records: Records, queue: object
) -> None:
    receiver = Receiver().start()
    try:
        WebhookEndpoints(db).create("alice", receiver.url, list(BATCH_EVENT_TYPES))  # registered when allowed
        job = add_job(records, queue, failed=True)  # type: ignore[arg-type]
        outbox = Outbox(db)
        [delivery] = outbox.claim("strict", 10, 60)
        assert not sender(outbox, "strict", allow_private_addresses=False).send(delivery)
    finally:
        receiver.stop()
    assert receiver.received == []
    [row] = deliveries(db, job.id)
    assert row.status == "pending" and row.attempts == 1  # tried again later: DNS may change back
    assert row.last_error.startswith("UnsafeWebhookUrl: ") and "127.0.0.1" in row.last_error
