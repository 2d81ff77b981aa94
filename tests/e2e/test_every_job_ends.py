"""Every job ends, as processes die: a worker killed (-9) during a cancel, an expiry or the
final join, the API killed during a cancel's join and started again. No worker is started
again: the API's sweeper ends the job once the dead process's lease runs out, keeping
exactly the lines that were done.

To kill a finalizer mid-join at a known instruction, the tests hold a SHARE lock on the
`files` table: a finalizer has then written the joined objects to storage and waits to
record them (the last step, in the transaction that ends the job)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from sqlalchemy import text

from app.core.database import Database
from tests.e2e.conftest import Service
from tests.e2e.test_faults import ORPHAN_GRACE_SECONDS, completed, rows_of, submit
from tests.e2e.test_service import wait_until_done
from tests.helpers import read_jsonl

pytestmark = pytest.mark.engine
LEASE = {"LEASE_SECONDS": "3", "HEARTBEAT_SECONDS": "1", "SWEEP_SECONDS": "0.5"}


def kill_worker(worker) -> None:  # type: ignore[no-untyped-def]
    engine_processes = psutil.Process(worker.pid).children(recursive=True)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    psutil.wait_procs(engine_processes, timeout=ORPHAN_GRACE_SECONDS)


def ended_with_every_line_once(service: Service, batch_id: str, status: str, code: str, lines: int) -> None:
    with service.client() as client:
        done = wait_until_done(client, batch_id)
        assert done["status"] == status, done
        kept = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
        rest = read_jsonl(client.get(f"/v1/files/{done['error_file_id']}/content").content)
    ids = [line["custom_id"] for line in kept + rest]
    assert ids == [f"l{i:05d}" for i in range(lines)]  # every line once, in input order
    assert done["request_counts"] == {"total": lines, "completed": len(kept), "failed": len(rest)}
    assert 100 <= len(kept) < lines and {line["error"]["code"] for line in rest} == {code}


def run_until(service: Service, lines: int) -> tuple[str, object]:
    service.env.update(LEASE)
    service.start_api()
    worker = service.start_worker()
    service.wait_for("/readyz")
    batch_id = submit(service, rows_of(lines), batch_size=16)
    while completed(service, batch_id) < 100:
        time.sleep(0.05)
    return batch_id, worker


def test_a_worker_killed_during_a_cancel_leaves_a_cancelled_job(service: Service) -> None:
    batch_id, worker = run_until(service, 2000)
    with service.client() as client:
        assert client.post(f"/v1/batches/{batch_id}/cancel").json()["status"] in ("cancelling", "cancelled")
    kill_worker(worker)
    ended_with_every_line_once(service, batch_id, "cancelled", "batch_cancelled", 2000)


def test_a_worker_killed_during_an_expiry_leaves_an_expired_job(service: Service) -> None:
    batch_id, worker = run_until(service, 2000)
    kill_worker(worker)  # mid-shard: its lease still holds for a few seconds
    db = Database(service.env["DATABASE_URL"])
    with db.session() as session:
        session.execute(text("UPDATE jobs SET expires_at = now() WHERE id = :id"), {"id": batch_id})
    db.dispose()
    ended_with_every_line_once(service, batch_id, "expired", "batch_expired", 2000)


@contextmanager
def joins_held(service: Service) -> Iterator[Database]:
    """Finalizers block on recording their joined files until the block ends."""
    db = Database(service.env["DATABASE_URL"])
    try:
        with db.engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE files IN SHARE MODE"))
            yield db
    finally:
        db.dispose()


def held_finalizer(db: Database, batch_id: str, timeout: float = 120) -> str:
    """The id of the process that claimed the job's finalization (and now waits mid-join)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            row = conn.execute(text("SELECT status, finalizer_id FROM jobs WHERE id = :id"), {"id": batch_id}).one()
        if row.finalizer_id is not None:
            return str(row.finalizer_id)
        time.sleep(0.05)
    raise TimeoutError(f"nobody claimed the finalization of {batch_id}")


def kill_api(service: Service) -> None:
    api = service.processes[0]
    api.send_signal(signal.SIGKILL)
    api.wait()
    service.processes.remove(api)


def test_a_worker_killed_during_the_final_join_leaves_a_completed_job(service: Service) -> None:
    service.env.update(LEASE)
    service.start_api()
    worker = service.start_worker()
    service.wait_for("/readyz")
    rows = rows_of(600, max_tokens=4)
    batch_id = submit(service, rows, batch_size=32)  # its upload is recorded before the files are held
    with joins_held(service) as db:
        finalizer = held_finalizer(db, batch_id)
        with service.client() as client:
            assert client.get(f"/v1/batches/{batch_id}").json()["status"] == "finalizing"
        if finalizer.startswith("api-"):  # the API's sweeper came first: it is the one to kill
            kill_api(service)
        else:
            kill_worker(worker)
    if finalizer.startswith("api-"):
        service.start_api()
    with service.client() as client:
        done = wait_until_done(client, batch_id)
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
        files = client.get("/v1/files", params={"limit": 100}).json()["data"]
    assert done["status"] == "completed", done
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]  # every line once
    assert done["request_counts"] == {"total": 600, "completed": 600, "failed": 0}
    assert [f["purpose"] for f in files].count("batch_output") == 1  # the dead finalizer's join left no file


def test_the_api_killed_during_a_cancel_still_ends_the_job(service: Service) -> None:
    service.env.update(LEASE)
    service.start_api()  # no worker: the cancel's sweep in the API process ends the job
    batch_id = submit(service, rows_of(50), batch_size=16)
    with joins_held(service) as db:
        with service.client() as client:
            assert client.post(f"/v1/batches/{batch_id}/cancel").json()["status"] == "cancelling"
        assert held_finalizer(db, batch_id).startswith("api-")  # mid-join in the API process...
        kill_api(service)  # ...which dies there
    service.start_api()
    with service.client() as client:
        done = wait_until_done(client, batch_id)
        errors = read_jsonl(client.get(f"/v1/files/{done['error_file_id']}/content").content)
    assert done["status"] == "cancelled"
    assert [line["custom_id"] for line in errors] == [f"l{i:05d}" for i in range(50)]
