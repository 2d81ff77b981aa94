"""Webhooks through the official `openai` SDK against the API as a process: an endpoint
registered with an admin key, its receiver down when a batch ends, the API stopped and
started again while the delivery waits in Postgres; once the receiver is up the delivery
arrives, and `client.webhooks.unwrap` verifies it as the batch's event."""

from __future__ import annotations

import time
from typing import Any

from openai import OpenAI
from sqlalchemy import text

from app.core.database import Database
from tests.e2e.conftest import Service
from tests.helpers import completion_line, jsonl
from tests.receiver import Receiver

WEBHOOKS = {
    "WEBHOOK_POLL_SECONDS": "0.1",
    "WEBHOOK_FIRST_RETRY_SECONDS": "0.3",
    "WEBHOOK_MAX_RETRY_SECONDS": "1",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "SWEEP_SECONDS": "0.5",
}


def delivery_of(service: Service, batch_id: str) -> dict[str, Any] | None:
    db = Database(service.env["DATABASE_URL"])
    try:
        with db.engine.connect() as conn:
            row = conn.execute(
                text("SELECT status, attempts, sender_id, last_error FROM webhook_deliveries WHERE job_id = :id"),
                {"id": batch_id},
            ).one_or_none()
    finally:
        db.dispose()
    return None if row is None else dict(row._mapping)


def wait_for_delivery(service: Service, batch_id: str, attempts: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        delivery = delivery_of(service, batch_id)
        if delivery is not None and delivery["attempts"] >= attempts:
            return delivery
        assert time.monotonic() < deadline, f"{attempts} attempts not made within {timeout}s: {delivery}"
        time.sleep(0.1)


def restart_api(service: Service) -> int:
    """SIGTERM to the API (it is the only process), then a new one; returns the new pid."""
    service.stop()
    service.processes.clear()
    service.start_api()
    return service.processes[0].pid


def test_a_webhook_whose_receiver_was_down_arrives_after_an_api_restart_and_unwraps(service: Service) -> None:
    service.env.update(WEBHOOKS)
    service.start_api()  # no worker: the batch stays queued until it is cancelled
    admin = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("ops", admin=True), max_retries=0)
    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("hooked"), max_retries=0)
    receiver = Receiver()  # not started: its port refuses connections
    try:
        endpoint = admin.webhooks.create(
            url=receiver.url, name="hooked's batches", event_types=["batch.cancelled"], extra_body={"owner": "hooked"}
        )
        source = client.files.create(file=("in.jsonl", jsonl([completion_line("a", "say a")])), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
        client.batches.cancel(batch.id)
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).status != "cancelled":
            assert time.monotonic() < deadline, "the queued batch was not cancelled"
            time.sleep(0.1)

        refused = wait_for_delivery(service, batch.id, attempts=2)  # the receiver is down: retried
        assert refused["status"] == "pending" and "Connect" in (refused["last_error"] or ""), refused
        first_sender = refused["sender_id"]
        pid = restart_api(service)
        waiting = delivery_of(service, batch.id)
        assert waiting is not None and waiting["status"] == "pending"  # kept in Postgres across the restart
        wait_for_delivery(service, batch.id, attempts=waiting["attempts"] + 1)  # the new API retries it

        receiver.start()
        [got, *again] = receiver.wait_for(1, timeout=30)
        deadline = time.monotonic() + 30  # the receiver records a request before it answers it
        while (delivered := delivery_of(service, batch.id)) is None or delivered["status"] != "delivered":
            assert time.monotonic() < deadline, delivered
            time.sleep(0.1)
        assert f"-{pid}-" in delivered["sender_id"] and delivered["sender_id"] != first_sender  # the new process
        assert all(r.headers["webhook-id"] == got.headers["webhook-id"] for r in again)  # at least once, one event

        event = OpenAI(api_key="unused").webhooks.unwrap(got.body, got.headers, secret=endpoint.signing_secret)
        assert event.type == "batch.cancelled" and event.data.id == batch.id
    finally:
        receiver.stop()
