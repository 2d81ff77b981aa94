"""A bad request never kills a worker or takes good lines with it: what vLLM would refuse is
caught when the line is planned, and a request the engine still refuses is isolated by
splitting its static batch; the good lines complete."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine
from worker.loop import WorkerLoop

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


def test_a_request_the_engine_refuses_is_split_out_of_its_static_batch_and_the_rest_run(
    client: TestClient, records: Records, queue: JobQueue, store: ObjectStore
) -> None:
    rows = [completion_line(f"r{i}", "REFUSED" if i == 11 else f"fine {i}") for i in range(16)]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=16)
    engine = FakeEngine()
    loop = WorkerLoop(engine, records, queue, store, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    while loop.run_once():  # raises EngineFailed if the refusal were taken for a dead engine
        pass

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 16, "completed": 15, "failed": 1}
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == [
        f"r{i}" for i in range(16) if i != 11
    ]
    [refused] = download(client, done["error_file_id"])
    assert refused["custom_id"] == "r11" and "refused" in refused["response"]["body"]["error"]["message"]
    assert engine.calls[0] == 16 and len(engine.calls) <= 1 + 2 * 4  # bisection: log2(16) levels, two halves each


POISON = {
    "negative-token": ({"prompt": [-1, 5]}, "prompt", "out of vocabulary"),
    "huge-token": ({"prompt": [5, 1_000_000_000]}, "prompt", "out of vocabulary"),
    "huge-seed": ({"prompt": "hello", "seed": 2**64}, "seed", "seed"),
    "bad-schema": (
        {"prompt": "hello", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}},
        None,
        "",
    ),
}


def test_poison_lines_of_each_kind_fail_alone_and_the_worker_lives(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = []
    for i in range(40):
        kind = list(POISON)[i // 10] if i % 10 == 3 else None
        body = POISON[kind][0] if kind else {"prompt": f"good line {i}", "max_tokens": 4}
        rows.append({"custom_id": kind or f"good-{i}", **body})
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=16, max_tokens=4)
    run_worker_until_idle(engine, settings, store)  # an EngineFailed here would fail the test

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 40, "completed": 36, "failed": 4}
    assert len(download(client, done["output_file_id"])) == 36
    errors = {line["custom_id"]: line["response"]["body"]["error"] for line in download(client, done["error_file_id"])}
    assert set(errors) == set(POISON)
    for kind, (_, param, words) in POISON.items():
        assert errors[kind]["param"] == param, errors[kind]
        assert words.lower() in errors[kind]["message"].lower(), errors[kind]
    # The engine still serves: a fresh job on the same engine completes.
    again = create_batch(client, upload(client, jsonl([completion_line("after", "still alive", max_tokens=2)]))["id"])
    run_worker_until_idle(engine, settings, store)
    assert client.get(f"/v1/batches/{again['id']}").json()["status"] == "completed"
