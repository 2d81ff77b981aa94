"""Poison lines of different kinds in a large batch, as a user sends them: the dry run
reports the ones planning refuses, and a worker process runs the batch without ever
dying for them; every good line completes and every bad one is an error line naming its
field."""

from __future__ import annotations

import pytest

from app.core.database import Database
from app.data.records import Records
from tests.e2e.conftest import Service
from tests.e2e.test_service import wait_until_done
from tests.helpers import completion_line, jsonl, read_jsonl
from tests.integration.test_poison_lines import POISON

pytestmark = pytest.mark.engine
LINES = 600
KINDS = [
    "token-past-vocabulary",
    "seed-past-64-bits",
    "too-many-logprobs",
    "empty-prompt",
    "schema-not-json-schema",
    "schema-unknown-format",  # only the worker's engine check finds it
]
POSITIONS = {37 + 101 * k: kind for k, kind in enumerate(KINDS)}  # in different static batches of 64


def test_poison_lines_in_a_large_batch_fail_alone_and_the_worker_process_lives_on(running_service: Service) -> None:
    service = running_service
    [worker] = service.workers
    rows = [
        {"custom_id": POSITIONS[i], "method": "POST", "url": "/v1/completions", "body": POISON[POSITIONS[i]].body}
        if i in POSITIONS
        else completion_line(f"good-{i:04d}", f"summarize record {i}")
        for i in range(LINES)
    ]
    planned = {kind for kind in KINDS if POISON[kind].planned}
    with service.client("poisoner") as client:
        file_id = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        spec = {"input_file_id": file_id, "endpoint": "/v1/completions", "batch_size": 64, "max_tokens": 4}

        estimate = client.post("/v1/batches", json={**spec, "dry_run": True}).json()
        assert not estimate["would_fail"], estimate
        assert estimate["failing_lines"] == len(planned)
        assert {(line["line"], line["custom_id"], line["param"]) for line in estimate["failing"]} == {
            (position + 1, kind, POISON[kind].param) for position, kind in POSITIONS.items() if kind in planned
        }

        done = wait_until_done(client, client.post("/v1/batches", json=spec).json()["id"])
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": LINES, "completed": LINES - len(KINDS), "failed": len(KINDS)}
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
        errors = read_jsonl(client.get(f"/v1/files/{done['error_file_id']}/content").content)

    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows if row["custom_id"] not in KINDS]
    assert all(0 < line["response"]["body"]["usage"]["completion_tokens"] <= 4 for line in output)
    assert [line["custom_id"] for line in errors] == list(POSITIONS.values())
    for line in errors:
        poison, error = POISON[line["custom_id"]], line["response"]["body"]["error"]
        assert line["response"]["status_code"] == 400
        assert error["param"] == poison.param, line
        assert poison.words.lower() in error["message"].lower(), line

    # The worker that started is the one that ran every line: it never died, and no other registered.
    assert worker.poll() is None
    db = Database(service.env["DATABASE_URL"])
    try:
        assert [w.pid for w in Records(db).list_workers()] == [worker.pid]
    finally:
        db.dispose()
