"""The worker with tensor_parallel_size=2, the setting the 2 x A100 deployment uses,
on the CPU build (one core per rank)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Service
from tests.e2e.test_service import wait_until_done
from tests.helpers import completion_line, jsonl, read_jsonl

pytestmark = pytest.mark.engine


def test_a_job_runs_on_a_tensor_parallel_2_worker(service: Service) -> None:
    service.start_api()
    service.start_worker("tp2", TENSOR_PARALLEL_SIZE="2", VLLM_CPU_OMP_THREADS_BIND="0|1")
    ready = service.wait_for("/readyz").json()
    assert ready["workers"]
    rows = [completion_line(f"tp-{i}", f"parallel {i}", max_tokens=6) for i in range(40)]
    with service.client() as client:
        file_id = client.post("/v1/files", files={"file": ("tp.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        batch = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "batch_size": 8}
        ).json()
        done = wait_until_done(client, batch["id"])
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
    assert done["status"] == "completed"
    assert done["throughput"]["tensor_parallel_size"] == 2
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
