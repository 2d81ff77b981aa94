"""Every job ends, as processes die: a worker killed (-9) during a cancel or an expiry, the
API restarted during a cancel. No worker is started again: the API's sweeper ends the
job once the dead worker's lease runs out, keeping exactly the lines that were done."""

from __future__ import annotations

import signal
import time

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


def test_the_api_restarted_during_a_cancel_still_ends_the_job(service: Service) -> None:
    service.env.update(LEASE)
    service.start_api()  # no worker: the job waits in the queue
    batch_id = submit(service, rows_of(50), batch_size=16)
    with service.client() as client:
        assert client.post(f"/v1/batches/{batch_id}/cancel").json()["status"] in ("cancelling", "cancelled")
    api = service.processes[0]
    api.send_signal(signal.SIGKILL)
    api.wait()
    service.processes.remove(api)
    service.start_api()
    with service.client() as client:
        done = wait_until_done(client, batch_id)
        errors = read_jsonl(client.get(f"/v1/files/{done['error_file_id']}/content").content)
    assert done["status"] == "cancelled"
    assert [line["custom_id"] for line in errors] == [f"l{i:05d}" for i in range(50)]
