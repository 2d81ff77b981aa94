"""The webhook outbox below the API: the event is queued in the transaction that ends the
job, claims are leased and never shared, and a delivery is given up after its max age."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import app.data.queue as queue_module
from app.core.database import Database
from app.data.ids import new_id, now
from app.data.json_values import JobDefaults
from app.data.models import FileRecord, Job, JobStatus, WebhookDelivery
from app.data.outbox import BATCH_EVENT_TYPES, Outbox, record_event
from app.data.queue import FinalizationLost, JobQueue
from app.data.records import Records
from app.data.webhook_endpoints import WebhookEndpoints
from app.jobs.webhooks import WebhookSender
from tests.receiver import Receiver

DOWN_URL = "http://127.0.0.1:9/hooks"  # the discard port: nothing listens


def add_job(records: Records, queue: JobQueue, owner: str = "alice", failed: bool = False) -> Job:
    source = records.add_file(
        FileRecord(
            id=new_id("file-"),
            owner=owner,
            filename="in.jsonl",
            purpose="batch",
            bytes=10,
            sha256="0" * 64,
            line_count=2,
            storage_key="files/in",
        )
    )
    created = now()
    job = Job(
        id=new_id("batch_"),
        owner=owner,
        input_file_id=source.id,
        endpoint="/v1/completions",
        completion_window="24h",
        model="demo-llama",
        batch_size=2,
        status=JobStatus.FAILED if failed else JobStatus.QUEUED,
        sampling_defaults=JobDefaults(max_tokens=16),
        request_total=2,
        created_at=created,
        expires_at=created + timedelta(days=1),
        failed_at=created if failed else None,
    )
    return queue.create_job(job, 100)


def output_file(owner: str = "alice") -> FileRecord:
    return FileRecord(
        id=new_id("file-"),
        owner=owner,
        filename="out.jsonl",
        purpose="batch_output",
        bytes=0,
        sha256="0" * 64,
        storage_key="batches/out",
    )


def deliveries(db: Database, job_id: str | None = None) -> list[WebhookDelivery]:
    with db.session() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if job_id is not None:
            query = query.where(WebhookDelivery.job_id == job_id)
        return list(session.scalars(query))


def sender(
    outbox: Outbox, sender_id: str, max_age_seconds: float = 3600.0, allow_private_addresses: bool = True
) -> WebhookSender:
    return WebhookSender(
        outbox,
        sender_id=sender_id,
        allow_private_addresses=allow_private_addresses,  # the tests' receivers listen on loopback
        poll_seconds=0.05,
        timeout_seconds=5.0,
        first_retry_seconds=0.1,
        max_retry_seconds=0.2,
        max_age_seconds=max_age_seconds,
    )


def test_the_event_is_queued_in_the_transaction_that_ends_the_job_and_never_without_it(
    db: Database, records: Records, queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    WebhookEndpoints(db).create("alice", DOWN_URL, list(BATCH_EVENT_TYPES))
    job = add_job(records, queue)
    queue.request_cancel(job.id, None)
    assert queue.claim_finalization("finalizer", 60, job.id) is not None

    def queue_then_fail(session: Session, job: Job, at: datetime) -> str:
        record_event(session, job, at)
        raise RuntimeError("the commit never comes")

    monkeypatch.setattr(queue_module, "record_event", queue_then_fail)
    with pytest.raises(RuntimeError):
        queue.complete_job(job.id, "finalizer", output_file(), None, 2)
    assert records.get_job(job.id).status == JobStatus.CANCELLING and deliveries(db) == []  # both, or neither
    monkeypatch.undo()

    with pytest.raises(FinalizationLost):  # a finalizer that lost the job ends nothing, queues nothing
        queue.complete_job(job.id, "someone-else", output_file(), None, 2)
    assert deliveries(db) == []

    queue.complete_job(job.id, "finalizer", output_file(), None, 2)
    assert records.get_job(job.id).status == JobStatus.CANCELLED
    assert [(d.event_type, d.status, d.attempts) for d in deliveries(db)] == [("batch.cancelled", "pending", 0)]


def test_a_batch_failed_at_creation_or_by_its_finalization_queues_batch_failed(
    db: Database, records: Records, queue: JobQueue
) -> None:
    WebhookEndpoints(db).create("alice", DOWN_URL, list(BATCH_EVENT_TYPES))
    at_creation = add_job(records, queue, failed=True)
    finalization = add_job(records, queue)
    queue.request_cancel(finalization.id, None)
    assert queue.claim_finalization("finalizer", 60, finalization.id) is not None
    queue.fail_finalization(finalization.id, "finalizer", "storage is gone")

    assert [d.event_type for d in deliveries(db, at_creation.id)] == ["batch.failed"]
    assert [d.event_type for d in deliveries(db, finalization.id)] == ["batch.failed"]
    assert deliveries(db, at_creation.id)[0].event_id != deliveries(db, finalization.id)[0].event_id


def test_concurrent_senders_never_hold_the_same_delivery(db: Database, records: Records, queue: JobQueue) -> None:
    endpoints = WebhookEndpoints(db)
    for _ in range(30):
        endpoints.create("alice", DOWN_URL, list(BATCH_EVENT_TYPES))
    add_job(records, queue, failed=True)  # one event, 30 deliveries
    outbox = Outbox(db)
    claimed: dict[str, list[int]] = {f"sender-{n}": [] for n in range(4)}

    def claim_until_empty(sender_id: str) -> None:
        while batch := outbox.claim(sender_id, 3, 60):
            claimed[sender_id] += [d.id for d in batch]

    threads = [threading.Thread(target=claim_until_empty, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [delivery_id for ids in claimed.values() for delivery_id in ids]
    assert sorted(every) == sorted(d.id for d in deliveries(db)) and len(every) == 30  # each once


def test_a_sender_that_dies_mid_send_is_replaced_when_its_lease_runs_out(
    db: Database, records: Records, queue: JobQueue
) -> None:
    receiver = Receiver().start()
    try:
        endpoint = WebhookEndpoints(db).create("alice", receiver.url, list(BATCH_EVENT_TYPES))
        job = add_job(records, queue, failed=True)
        outbox = Outbox(db)
        [held] = outbox.claim("dies", 10, lease_seconds=0.3)  # ...and its process dies before sending
        assert outbox.claim("takes-over", 10, 60) == []  # held: nobody else sends it meanwhile
        time.sleep(0.4)

        [again] = outbox.claim("takes-over", 10, 60)
        assert (again.id, again.attempts) == (held.id, 2)
        # Back late, the dead sender's record of its attempt changes nothing.
        assert outbox.retry(held, "dies", status_code=None, error="late", delay_seconds=0.1, max_age_seconds=60) is None
        assert sender(outbox, "takes-over").send(again)
        [got] = receiver.wait_for(1)
    finally:
        receiver.stop()
    [row] = deliveries(db, job.id)
    assert (row.status, row.attempts, row.sender_id, row.endpoint_id) == ("delivered", 2, "takes-over", endpoint.id)
    assert got.headers["webhook-id"] == row.event_id


def test_a_delivery_the_endpoint_keeps_refusing_is_given_up_after_the_max_age(
    db: Database, records: Records, queue: JobQueue
) -> None:
    receiver = Receiver(answers=[500] * 1000).start()
    running = sender(Outbox(db), "sender", max_age_seconds=0.6)
    try:
        WebhookEndpoints(db).create("alice", receiver.url, list(BATCH_EVENT_TYPES))
        job = add_job(records, queue, failed=True)
        running.start()
        deadline = time.monotonic() + 10
        while deliveries(db, job.id)[0].status == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        running.stop()
        receiver.stop()
    [row] = deliveries(db, job.id)
    assert row.status == "failed" and row.failed_at is not None and row.delivered_at is None
    assert row.attempts == len(receiver.received) >= 2
    assert row.last_status_code == 500 and row.last_error == "HTTP 500: ok"


def test_deleting_an_endpoint_gives_up_its_pending_deliveries_and_sends_it_nothing_new(
    db: Database, records: Records, queue: JobQueue
) -> None:
    endpoints = WebhookEndpoints(db)
    endpoint = endpoints.create("alice", DOWN_URL, list(BATCH_EVENT_TYPES))
    before = add_job(records, queue, failed=True)
    endpoints.delete(endpoint.id)
    after = add_job(records, queue, failed=True)

    [row] = deliveries(db, before.id)
    assert (row.status, row.last_error) == ("failed", "endpoint deleted")
    assert deliveries(db, after.id) == [] and Outbox(db).claim("sender", 10, 60) == []
