"""Per-batch engine telemetry, recorded by the real engine and shown in the job's stats."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, run_worker_until_idle, upload
from tests.integration.test_admin import login
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine


def test_each_static_batch_records_prefill_decode_and_its_idle_tail(
    app: FastAPI, client: TestClient, records: Records, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    # In each static batch of 4, one answer runs 48 tokens and three stop after 2 (the
    # random demo model rarely ends early): the long one runs alone at the end.
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=48 if i % 4 == 0 else 2, temperature=0) for i in range(8)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=4, pack_by_length=False)
    run_worker_until_idle(engine, settings, store)

    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    for point in stats["windows"]:
        telemetry = point["engine"]
        assert telemetry["prefill_tokens_per_second"] > 0 and telemetry["decode_tokens_per_second"] > 0
        assert telemetry["preemptions"] == 0 and 0 < telemetry["kv_cache_demand"] < 1
        assert 0 < telemetry["idle_tail_seconds"] < telemetry["decode_seconds"]
        assert telemetry["idle_tail_fraction"] > 0.3  # 46 of 48 decode steps with one sequence left
    totals = stats["engine"]
    assert totals["static_batches"] == 2
    assert totals["idle_tail_seconds"] == pytest.approx(
        sum(p["engine"]["idle_tail_seconds"] for p in stats["windows"]), abs=1e-3
    )

    _, secret = create_key(records, "ops", admin=True)
    browser, _ = login(app, secret)
    page = browser.get(f"/admin/batches/{batch['id']}").text
    assert 'id="idle-tail"' in page and f"{totals['idle_tail_seconds']} s" in page
