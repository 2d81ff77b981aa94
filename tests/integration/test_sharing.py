"""The engine shared at static-batch grain (worker.sharing): a small job never waits for a
big one, a priority job's static batches go first, one job spreads over every worker, and
the deadline orders the queue.

A worker here is a WorkerLoop in a thread of this process with a FakeEngine whose steps take
a little time (as a real engine's do), so a big job is still running when the test acts.
Every thread started is stopped, even when the test fails."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.database import Database
from app.core.settings import Settings
from app.core.storage import LocalStore, ObjectStore
from app.data.keys import create_key
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.endpoints.generate_call import Generation, Sampling
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, upload
from tests.integration.test_admin import login
from worker.loop import WorkerLoop

STEP_SECONDS = 0.01  # a fake engine step: long enough that a big job outlives the test's actions


class SlowEngine(FakeEngine):
    """A FakeEngine whose step takes STEP_SECONDS, and which records the job of each static
    batch enqueued (by a marker in its prompts)."""

    def __init__(self, max_num_seqs: int = 256) -> None:
        super().__init__(max_num_seqs=max_num_seqs)
        self.enqueued: list[bytes] = []  # the first prompt of each static batch, in enqueue order

    def enqueue(self, prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> list[str]:
        self.enqueued.append(bytes(prompts[0]))
        return super().enqueue(prompts, sampling, priority)

    def step(self) -> list[tuple[str, Generation]]:
        time.sleep(STEP_SECONDS)
        return super().step()


@contextlib.contextmanager
def workers(engines: list[FakeEngine], settings: Settings, store: ObjectStore) -> Iterator[list[WorkerLoop]]:
    """Worker loops in threads until the block ends (or fails): each stopped and joined."""
    db = Database(settings.database_url or "")
    loops = [
        WorkerLoop(engine, Records(db), JobQueue(db), store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.2)
        for engine in engines
    ]
    threads = [threading.Thread(target=loop.run_forever, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.stop_requested.set()
        for thread in threads:
            thread.join(60)
        db.dispose()
        assert not any(thread.is_alive() for thread in threads), "a worker thread did not stop"


def wait_for(client: TestClient, batch_id: str, check: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        if check(batch):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} never got there: {batch}"
        time.sleep(0.05)


def lines(prefix: str, count: int, max_tokens: int) -> bytes:
    return jsonl([completion_line(f"{prefix}-{i}", f"{prefix} {i}", max_tokens=max_tokens) for i in range(count)])


def windows_recorded(batch: dict[str, Any]) -> bool:
    return int(batch["request_counts"]["completed"]) > 0


def test_a_small_batch_created_while_a_big_one_runs_completes_while_the_big_one_is_in_progress(
    client: TestClient, other_client: TestClient, settings: Settings, store: ObjectStore
) -> None:
    big = create_batch(client, upload(client, lines("big", 4000, 16))["id"], batch_size=64)
    with workers([SlowEngine()], settings, store):
        wait_for(client, big["id"], windows_recorded)
        small = create_batch(other_client, upload(other_client, lines("small", 20, 4))["id"])
        done = wait_for(other_client, small["id"], lambda b: b["status"] == "completed")
        big_then = client.get(f"/v1/batches/{big['id']}").json()
        assert big_then["status"] == "in_progress", big_then
        assert big_then["request_counts"]["completed"] < 4000
        big_done = wait_for(client, big["id"], lambda b: b["status"] == "completed")

    output = download(other_client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"small-{i}" for i in range(20)]
    assert [line["response"]["body"]["choices"][0]["text"] for line in output] == [
        f"small {i}"[::-1] for i in range(20)
    ]  # the fake echoes backwards
    big_output = download(client, big_done["output_file_id"])
    assert [line["custom_id"] for line in big_output] == [f"big-{i}" for i in range(4000)]


def test_a_priority_batchs_static_batches_enter_before_a_lower_ones_queued_ones(
    client: TestClient, admin_client: TestClient, settings: Settings, store: ObjectStore
) -> None:
    engine = SlowEngine(max_num_seqs=8)  # room for a few static batches at once: the order shows
    # Long enough to outlive the urgent batch on a slow machine; cancelled once that is seen.
    low = create_batch(client, upload(client, lines("low", 4000, 8))["id"], batch_size=4, pack_by_length=False)
    with workers([engine], settings, store):
        wait_for(client, low["id"], windows_recorded)
        urgent = create_batch(
            admin_client, upload(admin_client, lines("urgent", 24, 8))["id"], batch_size=4, priority=50
        )
        wait_for(admin_client, urgent["id"], lambda b: b["status"] == "completed")
        low_then = client.get(f"/v1/batches/{low['id']}").json()
        time.sleep(0.5)  # a few more of the low batch's static batches go in
        client.post(f"/v1/batches/{low['id']}/cancel")
        wait_for(client, low["id"], lambda b: b["status"] == "cancelled")

    assert low_then["status"] == "in_progress"
    order = ["urgent" if prompt.startswith(b"urgent") else "low" for prompt in engine.enqueued]
    first, last = order.index("urgent"), len(order) - 1 - order[::-1].index("urgent")
    assert order[first : last + 1] == ["urgent"] * 6, order  # no queued low static batch went in between
    assert "low" in order[last + 1 :]  # the low batch was still running after
    # The engine is told each job's priority, so its scheduler takes the urgent requests first too.
    given = {(job, priority) for job, priority in zip(order, engine.priorities, strict=True)}
    assert given == {("low", 0), ("urgent", 50)}


def test_two_workers_both_record_windows_of_one_job_at_the_defaults(
    client: TestClient, settings: Settings, store: ObjectStore
) -> None:
    batch = create_batch(client, upload(client, lines("spread", 3 * settings.shard_size, 8))["id"])
    with workers([SlowEngine(), SlowEngine()], settings, store) as loops:
        done = wait_for(client, batch["id"], lambda b: b["status"] == "completed", timeout=300)

    db = Database(settings.database_url or "")
    try:
        with db.session() as session:
            by_worker = dict(
                session.execute(
                    text("SELECT worker_id, count(*) FROM windows WHERE job_id = :job GROUP BY worker_id"),
                    {"job": batch["id"]},
                ).all()
            )
    finally:
        db.dispose()
    assert sorted(by_worker) == sorted(loop.worker_id for loop in loops)
    assert done["throughput"]["workers"] == 2
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"spread-{i}" for i in range(3 * settings.shard_size)]


def test_a_1h_batch_is_claimed_before_a_24h_one_of_the_same_priority(
    client: TestClient, other_client: TestClient, queue: JobQueue
) -> None:
    day = create_batch(client, upload(client, lines("day", 2, 4))["id"], completion_window="24h")
    hour = create_batch(other_client, upload(other_client, lines("hour", 2, 4))["id"], completion_window="1h")
    week = create_batch(other_client, upload(other_client, lines("week", 2, 4))["id"], completion_window="7d")
    claimed = [queue.claim_shard(f"w{i}", "demo-llama", 60) for i in range(3)]
    assert [shard.job_id for shard in claimed if shard] == [hour["id"], day["id"], week["id"]]
    assert hour["expires_at"] - hour["created_at"] == 3600
    assert week["expires_at"] - week["created_at"] == 7 * 86400


@pytest.mark.parametrize("window", ["0h", "169h", "8d", "30m", "24", "h", "", "1e3h", "24h "])
def test_a_bad_completion_window_is_a_400_naming_it(client: TestClient, window: str) -> None:
    file_id = upload(client, lines("w", 1, 4))["id"]
    response = client.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": window}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "completion_window"
    assert "completion_window" in error["message"] or "1h" in error["message"]


def test_a_batch_that_cannot_finish_by_its_deadline_at_the_measured_rate_says_so(
    app: FastAPI, client: TestClient, records: Records, settings: Settings
) -> None:
    late = create_batch(client, upload(client, lines("late", 10, 4))["id"], completion_window="1h")
    soon = create_batch(client, upload(client, lines("soon", 10, 4))["id"], completion_window="1h")
    for batch in (late, soon):  # counted when queued (in the background)
        counted = wait_for(client, batch["id"], lambda b: b["estimate"] is not None)
        assert counted["estimate"]["eta_seconds"] is None and counted["deadline_at_risk"] is None  # no rate yet
    db = Database(settings.database_url or "")
    try:
        with db.engine.begin() as conn:  # as the estimate would say once workers have measured the model
            for batch, eta in ((late, 7200), (soon, 60)):
                conn.execute(
                    text(
                        "UPDATE jobs SET estimate = jsonb_set(estimate, '{eta_seconds}', to_jsonb(:eta)) WHERE id = :id"
                    ),
                    {"eta": eta, "id": batch["id"]},
                )
    finally:
        db.dispose()
    assert client.get(f"/v1/batches/{late['id']}").json()["deadline_at_risk"] is True
    assert client.get(f"/v1/batches/{soon['id']}").json()["deadline_at_risk"] is False

    _, secret = create_key(records, "ops", admin=True)
    browser, status = login(app, secret)
    assert status == 303
    page = browser.get("/admin").text
    late_row = page.split(f'data-batch-id="{late["id"]}"')[1].split("</tr>")[0]
    soon_row = page.split(f'data-batch-id="{soon["id"]}"')[1].split("</tr>")[0]
    assert 'class="at-risk"' in late_row and 'class="at-risk"' not in soon_row


class UnreadableInput(LocalStore):
    """Storage that refuses to read one input file (a permission error: nothing retries it)
    until told otherwise."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.unreadable: set[str] = set()

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        if key in self.unreadable:
            raise PermissionError(f"{key}: permission denied")
        return super().read_chunks(key, start)


def test_a_shard_whose_input_cannot_be_read_goes_back_while_the_others_run_on(
    client: TestClient, other_client: TestClient, settings: Settings, store: ObjectStore, records: Records
) -> None:
    assert isinstance(store, LocalStore)
    unreadable = UnreadableInput(store.root)
    broken = create_batch(client, upload(client, lines("broken", 40, 4))["id"])
    fine = create_batch(other_client, upload(other_client, lines("fine", 40, 4))["id"])
    unreadable.unreadable.add(records.get_file(broken["input_file_id"]).storage_key)
    db = Database(settings.database_url or "")
    loop = WorkerLoop(
        SlowEngine(), Records(db), JobQueue(db), unreadable, lease_seconds=60, heartbeat_seconds=5,
        poll_seconds=0.2, failure_pause_seconds=0.5,
    )  # fmt: skip
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        wait_for(other_client, fine["id"], lambda b: b["status"] == "completed")
        assert client.get(f"/v1/batches/{broken['id']}").json()["status"] != "completed"
        assert loop.holding == {} or all(s.job_id != broken["id"] for s in loop.holding.values())
        unreadable.unreadable.clear()  # storage is back: the shard is claimed again after its pause
        done = wait_for(client, broken["id"], lambda b: b["status"] == "completed")
    finally:
        loop.stop_requested.set()
        thread.join(60)
        db.dispose()
    assert not thread.is_alive()
    assert done["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
