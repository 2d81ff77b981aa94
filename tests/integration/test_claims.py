"""Claiming work from Postgres: one shard to one worker, leases that run out, resume."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.database import Database
from app.data.claims import CLAIM_PLANNER_SQL, CLAIM_SHARD_SQL, WindowResult
from app.data.models import Job
from app.data.queue import JobQueue, LeaseLost
from app.data.records import Records
from bench.queue_claims import queue_jobs
from tests.helpers import completion_line, create_batch, jsonl, upload


def queued_batch(client: TestClient, lines: int, **extra: object) -> str:
    rows = [completion_line(f"r{i}", "p") for i in range(lines)]
    return create_batch(client, upload(client, jsonl(rows))["id"], **extra)["id"]


LEASE = 2.0


def result(first: int, next_line: int) -> WindowResult:
    return WindowResult(first, next_line, next_line - first, next_line - first, 0, 5, 7, 0.5)


def test_many_workers_claiming_at_once_never_get_the_same_shard(client: TestClient, queue: JobQueue) -> None:
    repo_settings = client.app.state.settings  # type: ignore[attr-defined]
    repo_settings.shard_size = 1
    queued_batch(client, 12)
    barrier = threading.Barrier(6)

    def claim_all(worker: int) -> list[int]:
        barrier.wait()
        got = []
        while (shard := queue.claim_shard(f"w{worker}", "demo-llama", 60)) is not None:
            got.append(shard.shard_index)
        return got

    with ThreadPoolExecutor(6) as pool:
        claims = [i for got in pool.map(claim_all, range(6)) for i in got]
    assert sorted(claims) == list(range(12))


def test_an_expired_lease_is_claimed_again_and_resumes_after_the_last_recorded_batch(
    client: TestClient, records: Records, queue: JobQueue
) -> None:
    batch_id = queued_batch(client, 10, batch_size=4)
    first = queue.claim_shard("dead-worker", "demo-llama", lease_seconds=LEASE)
    assert first is not None and first.next_line == 0
    queue.record_window(first, 0, "dead-worker", result(0, 4), lease_seconds=LEASE)
    assert queue.claim_shard("other", "demo-llama", 60) is None  # still leased

    threading.Event().wait(LEASE + 0.5)
    second = queue.claim_shard("other", "demo-llama", 60)
    assert second is not None
    assert (second.shard_id, second.next_line, second.windows_done) == (first.shard_id, 4, 1)
    assert records.get_job(batch_id).status == "in_progress"

    # The old holder's late write is refused: no line is recorded twice.
    try:
        queue.record_window(first, 1, "dead-worker", result(4, 8), lease_seconds=60)
        raise AssertionError("a lost lease must not record")
    except LeaseLost:
        pass
    assert records.get_job(batch_id).request_completed == 4


def test_a_worker_only_claims_jobs_for_its_model(client: TestClient, queue: JobQueue) -> None:
    queued_batch(client, 3)
    assert queue.claim_shard("w", "another-model", 60) is None
    assert queue.claim_shard("w", "demo-llama", 60) is not None


def test_owners_take_turns_instead_of_the_oldest_owner_taking_every_worker(
    client: TestClient, other_client: TestClient, queue: JobQueue
) -> None:
    alice = [queued_batch(client, 4) for _ in range(3)]  # alice queues three jobs first
    bob = queued_batch(other_client, 4)  # then bob queues one
    order = []
    for _ in range(4):  # one worker, one shard at a time
        shard = queue.claim_shard("w", "demo-llama", LEASE)
        assert shard is not None
        order.append(shard.job_id)
        queue.finish_shard(shard, "w", stopped=False)
    assert order == [alice[0], bob, alice[1], alice[2]]


def test_a_second_worker_goes_to_the_owner_with_nothing_running(
    client: TestClient, other_client: TestClient, queue: JobQueue
) -> None:
    alice = [queued_batch(client, 4) for _ in range(2)]
    bob = queued_batch(other_client, 4)
    first = queue.claim_shard("w1", "demo-llama", LEASE)
    second = queue.claim_shard("w2", "demo-llama", LEASE)
    assert first is not None and second is not None
    assert (first.job_id, second.job_id) == (alice[0], bob)


def test_only_an_admin_puts_work_ahead_of_the_queue(
    client: TestClient, admin_client: TestClient, queue: JobQueue
) -> None:
    file_id = upload(client, jsonl([completion_line("r0", "p")]))["id"]
    refused = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "priority": 5})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "priority"
    behind = queued_batch(client, 1, priority=-1)  # anyone may put their own work behind
    ordinary = queued_batch(client, 1)
    urgent = queued_batch(admin_client, 1, priority=5)
    claimed = [queue.claim_shard(f"w{i}", "demo-llama", LEASE) for i in range(3)]
    assert [shard.job_id for shard in claimed if shard] == [urgent, ordinary, behind]


def shard_rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans of `shards` returned, over all their loops."""
    own = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") == "shards" else 0
    return int(own) + sum(shard_rows_read(child) for child in plan.get("Plans", []))


def test_a_claim_reads_a_handful_of_shards_however_deep_the_queue(db: Database, queue: JobQueue) -> None:
    """Owners share the workers without the claim sorting every waiting shard: it finds the
    top priority, skips from owner to owner, and takes the chosen owner's first shard."""
    queue_jobs(db.url, 400, owners=["ann", "ben", "cat"], model="deep-queue")
    with db.engine.connect() as connection:
        connection.execute(CLAIM_PLANNER_SQL)  # as the claim runs: no statistics yet for 1,200 rows
        explained = connection.execute(
            text("EXPLAIN (ANALYZE, FORMAT JSON) " + str(CLAIM_SHARD_SQL)),
            {
                "model": "deep-queue",
                "worker_id": "w",
                "lease_seconds": 60,
                "exclude_jobs": [],
                "overlapped_only": False,
            },
        ).scalar_one()
        connection.rollback()
    rows = shard_rows_read(explained[0]["Plan"])
    assert 0 < rows < 40, rows  # of 1,200 waiting shards
    claimed = [queue.claim_shard(f"w{i}", "deep-queue", LEASE) for i in range(3)]
    assert sorted(db_owner(db, shard.job_id) for shard in claimed if shard) == ["ann", "ben", "cat"]


def db_owner(db: Database, job_id: str) -> str:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.owner


def test_closing_a_shard_never_waits_on_a_window_being_recorded_for_the_same_job(
    client: TestClient, db: Database, queue: JobQueue
) -> None:
    """A window's INSERT holds a KEY SHARE lock on its job (the foreign key's check) until it
    commits; closing another shard of the job locks the job's row FOR NO KEY UPDATE, which
    does not wait on it (FOR UPDATE did, and three workers on one job deadlocked)."""
    job_id = queued_batch(client, 40, batch_size=4)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE shards SET end_line = 20 WHERE job_id = :job AND index = 0"), {"job": job_id})
        conn.execute(
            text(
                "INSERT INTO shards (job_id, index, start_line, end_line, next_line, status, priority, owner,"
                " job_created_at, deadline_at, windows_done, attempts)"
                " SELECT job_id, 1, 20, 40, 20, 'queued', priority, owner, job_created_at, deadline_at, 0, 0"
                " FROM shards WHERE job_id = :job AND index = 0"
            ),
            {"job": job_id},
        )
    first = queue.claim_shard("w1", "demo-llama", 60)
    second = queue.claim_shard("w2", "demo-llama", 60)
    assert first is not None and second is not None
    recording = db.engine.connect()
    transaction = recording.begin()
    try:
        recording.execute(  # w1 records a window and has not committed yet
            text(
                "INSERT INTO windows (job_id, shard_index, seq, first_line, prompts, completed, failed,"
                " prompt_tokens, completion_tokens, generate_seconds, tokens_per_second, worker_id, static_batches,"
                " cached_tokens, accelerator_seconds) VALUES (:job, 0, 0, 0, 4, 4, 0, 1, 1, 0.1, 10, 'w1', 1, 0, 0.1)"
            ),
            {"job": job_id},
        )
        closing = threading.Thread(target=queue.finish_shard, args=(second, "w2", False))
        closing.start()
        closing.join(60)
        assert not closing.is_alive(), "closing a shard waited on another shard's uncommitted window"
    finally:
        transaction.rollback()
        recording.close()
