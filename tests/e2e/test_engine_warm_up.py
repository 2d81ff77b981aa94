"""A worker whose very first static batch holds only short prompts answers them: on the CPU
build the engine's worker process died of SIGILL on a first forward pass of a few tokens,
so the engine warms up on a longer one before the worker claims anything."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Service
from tests.e2e.test_faults import submit
from tests.e2e.test_service import wait_until_done
from tests.helpers import completion_line, read_jsonl

pytestmark = pytest.mark.engine


def test_a_fresh_worker_answers_a_first_static_batch_of_three_token_prompts(service: Service) -> None:
    service.start_api()
    worker = service.start_worker()
    service.wait_for("/readyz")
    rows = [completion_line(f"s{i}", "hi", max_tokens=2) for i in range(8)]
    batch_id = submit(service, rows, batch_size=8)
    with service.client() as client:
        done = wait_until_done(client, batch_id)
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
        readiness = client.get("/readyz").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 8, done
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    assert all(line["response"]["body"]["usage"]["prompt_tokens"] <= 4 for line in output)
    assert worker.poll() is None and len(readiness["workers"]) == 1  # the same worker, never restarted
