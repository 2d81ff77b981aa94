"""A bad request never kills a worker or takes good lines with it: what vLLM would refuse is
caught when the line is planned (so the dry run reports it too), what only the engine can
tell is caught by its check before the static batch, and a request the engine still
refuses is isolated by splitting its static batch; the good lines complete, and every bad
line's error names its field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.json_schemas import MAX_SCHEMA_NESTING
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


@dataclass(frozen=True)
class Poison:
    body: dict[str, Any]
    param: str  # the field the error names
    words: str  # in the error's message
    planned: bool = True  # refused when the line is planned (the dry run reports it); else by the engine's check


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


# Each kind of request vLLM refuses (docs/operations.md, "What survives what"), keyed by custom_id.
POISON = {
    "token-below-vocabulary": Poison({"prompt": [-1, 5]}, "prompt", "out of vocabulary"),
    "token-past-vocabulary": Poison({"prompt": [5, 1_000_000_000]}, "prompt", "out of vocabulary"),
    "seed-past-64-bits": Poison({"prompt": "hello", "seed": 2**64}, "seed", "signed 64-bit"),
    "too-many-logprobs": Poison({"prompt": "hello", "logprobs": 21}, "logprobs", "at most 20 log probabilities"),
    "empty-prompt": Poison({"prompt": ""}, "prompt", "prompt is empty"),
    "empty-token-list": Poison({"prompt": []}, "prompt", "prompt is empty"),
    "prompt-past-context": Poison({"prompt": "hello", "max_tokens": 1000}, "max_tokens", "maximum context length"),
    "schema-not-json-schema": Poison(
        {"prompt": "hello", "response_format": json_schema({"type": "nope"})}, "response_format", "(at /type)"
    ),
    "schema-too-deep": Poison(
        {"prompt": "hello", "response_format": json_schema(nested_schema(MAX_SCHEMA_NESTING + 1))},
        "response_format",
        "nested too deeply",
    ),
    # Valid JSON Schema that vLLM's structured-output backend cannot compile: only the
    # engine knows, so its check refuses the line before the static batch.
    "schema-unknown-format": Poison(
        {"prompt": "hello", "response_format": json_schema({"type": "string", "format": "made-up"})},
        "response_format",
        "made-up",
        planned=False,
    ),
    "schema-dangling-ref": Poison(
        {"prompt": "hello", "response_format": json_schema({"$ref": "#/$defs/gone"})},
        "response_format",
        "/$defs/gone",
        planned=False,
    ),
}
LINES = 320
POSITIONS = {13 + 29 * k: kind for k, kind in enumerate(POISON)}  # spread over the static batches
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def good_line(i: int) -> dict[str, Any]:
    """A line that runs; some ask for as much as the engine allows, each kind a few times."""
    extra: dict[str, Any] = [{}, {"response_format": json_schema(SCHEMA)}, {"logprobs": 20}, {"seed": 2**63 - 1}][i % 4]
    return {"custom_id": f"good-{i}", "prompt": f"good line number {i}", **extra}


def test_poison_lines_of_each_kind_fail_alone_naming_their_field_and_the_engine_serves_on(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = [
        {"custom_id": POSITIONS[i], **POISON[POSITIONS[i]].body} if i in POSITIONS else good_line(i)
        for i in range(LINES)
    ]
    file_id = upload(client, jsonl(rows))["id"]
    planned = {kind for kind, poison in POISON.items() if poison.planned}

    estimate = client.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "max_tokens": 2, "dry_run": True}
    ).json()
    assert not estimate["would_fail"], estimate
    assert (estimate["runnable_lines"], estimate["failing_lines"]) == (LINES - len(planned), len(planned))
    reported = {line["custom_id"]: line for line in estimate["failing"]}
    assert set(reported) == planned
    for position, kind in POSITIONS.items():
        if kind in planned:
            assert (reported[kind]["line"], reported[kind]["param"]) == (position + 1, POISON[kind].param)

    batch = create_batch(client, file_id, batch_size=32, max_tokens=2)
    run_worker_until_idle(engine, settings, store)  # an EngineFailed here would fail the test

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": LINES, "completed": LINES - len(POISON), "failed": len(POISON)}
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [
        row["custom_id"] for row in rows if row["custom_id"] not in POISON
    ]
    assert all(line["response"]["status_code"] == 200 for line in output)
    error_lines = download(client, done["error_file_id"])
    assert [line["custom_id"] for line in error_lines] == list(POSITIONS.values())  # in input order
    errors = {line["custom_id"]: line["response"]["body"]["error"] for line in error_lines}
    for kind, poison in POISON.items():
        assert errors[kind]["param"] == poison.param, (kind, errors[kind])
        assert poison.words.lower() in errors[kind]["message"].lower(), (kind, errors[kind])
        if poison.planned:  # the dry run said exactly what the error file says
            assert errors[kind]["message"] == reported[kind]["message"]

    # The engine still serves: a fresh job on the same engine completes.
    again = create_batch(client, upload(client, jsonl([completion_line("after", "still alive", max_tokens=2)]))["id"])
    run_worker_until_idle(engine, settings, store)
    assert client.get(f"/v1/batches/{again['id']}").json()["status"] == "completed"
