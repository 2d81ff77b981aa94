"""A batch created with no options runs at the defaults: overlapped static batches of a
size fitted to the engine, and what it cost."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.records import Records
from app.jobs.create import record_estimate
from tests.helpers import completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from tests.integration.conftest import make_settings
from worker.engine import VllmEngine

PRICE = 4.0  # an accelerator-hour


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, gpu_hour_price=PRICE)


@pytest.mark.engine
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_batch_with_no_options_is_sized_to_the_engine_overlapped_and_costed(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, records: Records
) -> None:
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=1 + i % 9) for i in range(40)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"])
    assert batch["batch_size"] is None and batch["batching"] == "overlapped"
    record_estimate(records, store, settings, batch["id"])  # the API's background estimate, run now
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 40
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(40)]
    # The demo engine runs 256 sequences at once and its KV cache holds far more of these lines.
    assert done["batch_size"] == engine.max_num_seqs == 256
    assert "max_num_seqs (256)" in done["batch_size_basis"] and "KV cache" in done["batch_size_basis"]

    cost = done["cost"]
    assert cost["accelerator_seconds"] == pytest.approx(done["throughput"]["generate_seconds"], rel=1e-3, abs=1e-3)
    assert cost["cost"] == pytest.approx(cost["accelerator_seconds"] / 3600 * PRICE, rel=1e-2, abs=1e-6)
    per_million = cost["accelerator_seconds"] / 3600 * PRICE / done["usage"]["output_tokens"] * 1e6
    assert cost["cost_per_million_output_tokens"] == pytest.approx(per_million, rel=1e-2)
    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["cost"] == cost["cost"] and stats["batching"] == "overlapped"
    assert sum(w["accelerator_seconds"] for w in stats["windows"]) == pytest.approx(
        cost["accelerator_seconds"], rel=1e-3, abs=1e-3
    )


@pytest.mark.engine
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_strict_mode_is_one_blocking_generate_per_static_batch(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_overlap(*args: object) -> None:
        raise AssertionError("a strict batch's static batches entered the engine overlapped")

    monkeypatch.setattr(engine, "enqueue", no_overlap)
    rows = [completion_line(f"r{i}", f"item {i}", max_tokens=4) for i in range(10)]
    batch = create_batch(
        client, upload(client, jsonl(rows))["id"], batch_size=4, batching="strict", pack_by_length=False
    )
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["batching"] == "strict" and done["batch_size"] == 4 and done["batch_size_basis"] is None
    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert [w["prompts"] for w in stats["windows"]] == [4, 4, 2]
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == [f"r{i}" for i in range(10)]
