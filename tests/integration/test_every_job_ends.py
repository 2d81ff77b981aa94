"""Every job ends, whoever dies on the way: finalization, cancellation and expiry are
leased work, taken over when the lease of a process that died runs out."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.storage import ObjectStore
from app.data.claims import WindowResult
from app.data.queue import FinalizationLost, JobQueue, LeaseLost
from app.data.records import Records
from app.jobs.finalize import finalize_next
from app.jobs.output_lines import part_key
from app.jobs.sweeper import sweep
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, upload, wait_for_estimate
from worker.loop import WorkerLoop

SHORT_LEASE = 0.5  # seconds: long enough to hold, short enough to wait out in a test

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


def worker(records: Records, queue: JobQueue, store: ObjectStore) -> WorkerLoop:
    loop = WorkerLoop(FakeEngine(), records, queue, store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    return loop


def queued_job(client: TestClient, lines: int, **extra: object) -> str:
    """A queued job whose estimate is written: its writer holds the job row a moment, and
    a sweep passes a locked job over, so the tests' own sweeps would race it."""
    rows = [completion_line(f"r{i}", f"line {i}") for i in range(lines)]
    job_id = str(create_batch(client, upload(client, jsonl(rows))["id"], **{"pack_by_length": False, **extra})["id"])
    wait_for_estimate(client, job_id)
    return job_id


def test_a_finalizer_that_dies_mid_join_is_replaced_when_its_lease_runs_out(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 6, batch_size=2)
    loop = worker(records, queue, store)
    shard = queue.claim_shard(loop.worker_id, "demo-llama", 60)
    assert shard is not None
    loop.runner.run(shard)
    assert queue.finish_shard(shard, loop.worker_id, stopped=False)
    # A finalizer takes the job and dies at some instruction before it ends the job.
    assert queue.claim_finalization("dead-finalizer", SHORT_LEASE, job_id) is not None
    assert sweep(records, queue, store, "sweeper", 60, 3) == []  # held: nobody else may touch it
    time.sleep(SHORT_LEASE + 0.1)

    assert sweep(records, queue, store, "sweeper", 60, 3) == [job_id]
    done = client.get(f"/v1/batches/{job_id}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 6
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == [f"r{i}" for i in range(6)]
    with pytest.raises(FinalizationLost):  # the dead finalizer, back late, changes nothing
        queue.fail_finalization(job_id, "dead-finalizer", "late")


def test_finishing_a_shard_twice_after_a_lost_commit_still_leaves_the_job_to_be_finalized(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 4)
    loop = worker(records, queue, store)
    shard = queue.claim_shard(loop.worker_id, "demo-llama", 60)
    assert shard is not None
    loop.runner.run(shard)
    assert queue.finish_shard(shard, loop.worker_id, stopped=False)
    assert queue.finish_shard(shard, loop.worker_id, stopped=False)  # the retry of a commit whose answer was lost
    assert finalize_next(records, queue, store, loop.worker_id, 60, 3, job_id) == job_id
    assert client.get(f"/v1/batches/{job_id}").json()["status"] == "completed"


def test_a_cancelled_job_whose_worker_died_ends_cancelled_with_exactly_the_lines_done(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 10, batch_size=2)
    loop = worker(records, queue, store)
    shard = queue.claim_shard(loop.worker_id, "demo-llama", SHORT_LEASE)
    assert shard is not None
    # The worker records two windows (4 lines), then dies without a word.
    runner_queue_record = queue.record_window
    recorded: list[int] = []

    def record_two_then_die(shard_, seq, *args, **kwargs):  # type: ignore[no-untyped-def]
        if len(recorded) == 2:
            raise SystemExit("killed")
        recorded.append(seq)
        return runner_queue_record(shard_, seq, *args, **kwargs)

    loop.runner.queue.record_window = record_two_then_die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        loop.runner.run(shard)
    with records.db.session() as session:  # its last renewal, as the dead worker left it
        session.execute(text("UPDATE shards SET lease_expires_at = now() + interval '0.3 second'"))

    assert queue.request_cancel(job_id, None).status == "cancelling"
    time.sleep(0.5)
    sweep(records, queue, store, "sweeper", 60, 3)

    done = client.get(f"/v1/batches/{job_id}").json()
    assert done["status"] == "cancelled", done
    kept = download(client, done["output_file_id"])
    rest = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in kept] == ["r0", "r1", "r2", "r3"]
    assert [line["custom_id"] for line in rest] == [f"r{i}" for i in range(4, 10)]
    assert {line["error"]["code"] for line in rest} == {"batch_cancelled"}


def test_an_expired_job_whose_worker_died_ends_expired(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 4)
    assert queue.claim_shard("dead-worker", "demo-llama", SHORT_LEASE) is not None  # claimed, then the worker died
    with records.db.session() as session:
        session.execute(text("UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": job_id})
    assert sweep(records, queue, store, "sweeper", 60, 3) == []  # expiring; its shard's lease still holds
    time.sleep(SHORT_LEASE + 0.1)

    assert sweep(records, queue, store, "sweeper", 60, 3) == [job_id]
    done = client.get(f"/v1/batches/{job_id}").json()
    assert done["status"] == "expired" and done["request_counts"] == {"total": 4, "completed": 0, "failed": 4}


def test_a_finalization_that_keeps_failing_ends_the_job_failed_with_the_reason(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 4, batch_size=2)
    loop = worker(records, queue, store)
    shard = queue.claim_shard(loop.worker_id, "demo-llama", 60)
    assert shard is not None
    loop.runner.run(shard)
    queue.finish_shard(shard, loop.worker_id, stopped=False)
    store.delete(part_key(job_id, 0, 0, "out"))  # a part lost from storage: every join fails

    for _ in range(3):
        with pytest.raises(Exception, match=job_id):
            finalize_next(records, queue, store, "finalizer", 60, 3, job_id)
        with records.db.session() as session:  # the wait before the next attempt passes
            session.execute(text("UPDATE jobs SET finalize_lease_expires_at = now() WHERE id = :id"), {"id": job_id})
    assert finalize_next(records, queue, store, "finalizer", 60, 3, job_id) == job_id

    failed = client.get(f"/v1/batches/{job_id}").json()
    assert failed["status"] == "failed"
    assert failed["errors"]["data"][-1]["code"] == "finalization_failed"


def test_a_shard_given_back_after_its_job_began_to_stop_does_not_hold_the_job_open(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 6)
    shard = queue.claim_shard("w", "demo-llama", 60)
    assert shard is not None
    queue.request_cancel(job_id, None)  # not the route: its poke would sweep beside this test's sweep
    queue.release_shard(shard.shard_id, "w", failed=True)  # its engine died: the shard goes back to the queue
    sweep(records, queue, store, "sweeper", 60, 3)
    assert client.get(f"/v1/batches/{job_id}").json()["status"] == "cancelled"


def test_a_late_write_from_a_worker_whose_stopped_shard_was_taken_from_it_is_refused(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    job_id = queued_job(client, 6)
    shard = queue.claim_shard("slow-worker", "demo-llama", SHORT_LEASE)
    assert shard is not None
    queue.request_cancel(job_id, None)  # not the route: its poke would sweep beside this test's sweep
    time.sleep(SHORT_LEASE + 0.1)
    sweep(records, queue, store, "sweeper", 60, 3)  # stops the shard where it got to: nothing done
    done = client.get(f"/v1/batches/{job_id}").json()
    assert done["status"] == "cancelled" and done["request_counts"] == {"total": 6, "completed": 0, "failed": 6}
    late = WindowResult(0, 2, 2, 2, 0, 5, 7, 0.5)
    with pytest.raises(LeaseLost):
        queue.record_window(shard, 0, "slow-worker", late, 60)
    assert client.get(f"/v1/batches/{job_id}").json()["request_counts"]["completed"] == 0


def test_a_cancelled_job_is_finalized_by_id_even_while_another_transaction_holds_its_row(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    """A cancel's sweep claims that job by id and waits out a transaction on its row (the
    estimate being written, say) instead of passing it over until the next sweep."""
    job_id = queued_job(client, 3)
    queue.request_cancel(job_id, None)
    with ThreadPoolExecutor(1) as pool, queue.db.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR NO KEY UPDATE"), {"id": job_id})
        poked = pool.submit(sweep, records, queue, store, "poked-sweeper", 60, 3, [job_id])
        assert sweep(records, queue, store, "sweeper", 60, 3) == []  # an ordinary sweep passes it over
        time.sleep(0.2)
        assert not poked.done()  # the poked one waits for the row
        holder.rollback()
        assert poked.result(timeout=30) == [job_id]
    done = client.get(f"/v1/batches/{job_id}").json()
    assert done["status"] == "cancelled" and done["request_counts"]["failed"] == 3


def test_a_claim_of_one_job_whose_row_stays_busy_gives_up_and_leaves_it_to_the_next_sweep(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.data.queue.FINALIZATION_LOCK_SECONDS", 0.2)
    job_id = queued_job(client, 3)
    queue.request_cancel(job_id, None)
    with queue.db.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR NO KEY UPDATE"), {"id": job_id})
        assert queue.claim_finalization("poked-sweeper", 60, job_id) is None  # gave up after its lock timeout
        holder.rollback()
    assert sweep(records, queue, store, "sweeper", 60, 3) == [job_id]
    assert client.get(f"/v1/batches/{job_id}").json()["status"] == "cancelled"
