"""The whole path as a user runs it: HTTP upload, a worker process with the real
vLLM CPU engine, HTTP download, every line checked."""

from __future__ import annotations

import json
import os
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import Service
from tests.helpers import chat_line, completion_line, jsonl, read_jsonl
from worker.affinity import COMPUTE_PROCESS

pytestmark = pytest.mark.engine
JOB_SECONDS = 300


def wait_until_done(client: httpx.Client, batch_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + JOB_SECONDS
    seen_progress = set()
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        seen_progress.add(batch["request_counts"]["completed"])
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            batch["seen_progress"] = sorted(seen_progress)
            return batch  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(batch_id)


def test_upload_run_download_with_worker_process(running_service: Service) -> None:
    service = running_service
    [worker] = service.workers
    rows = [completion_line(f"line-{i:04d}", f"summarize record {i}", max_tokens=4 + i % 5) for i in range(600)]
    rows += [{"custom_id": f"plain-{i}", "prompt": f"question {i}"} for i in range(200)]
    with service.client("path-user") as client:
        file = client.post(
            "/v1/files", files={"file": ("prompts.jsonl", jsonl(rows))}, data={"purpose": "batch"}
        ).json()
        assert file["object"] == "file" and file["bytes"] == len(jsonl(rows)) and file["purpose"] == "batch"
        batch = client.post(
            "/v1/batches",
            json={
                "input_file_id": file["id"],
                "endpoint": "/v1/completions",
                "completion_window": "24h",
                "batch_size": 64,
            },
        ).json()
        assert batch["object"] == "batch" and batch["batch_size"] == 64

        done = wait_until_done(client, batch["id"])
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": 800, "completed": 800, "failed": 0}
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)

    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    for row, line in zip(rows, output, strict=True):
        usage = line["response"]["body"]["usage"]
        assert usage["completion_tokens"] <= row.get("body", {}).get("max_tokens", 16)
    assert worker.poll() is None
    assert_off_compute_cores(worker.pid)


def assert_off_compute_cores(worker_pid: int) -> None:
    """On the CPU build the engine computes on cores of its own: no other thread of the
    worker's process tree may run there (worker.affinity)."""
    tree = [psutil.Process(worker_pid), *psutil.Process(worker_pid).children(recursive=True)]
    compute = [p for p in tree if p.name().startswith(COMPUTE_PROCESS)]
    assert compute, [p.name() for p in tree]
    compute_cores = set().union(*(os.sched_getaffinity(p.pid) for p in compute))
    if compute_cores == os.sched_getaffinity(0):
        return  # the compute takes every core: nowhere else to go
    for process in tree:
        if process not in compute:
            for thread in process.threads():
                assert not os.sched_getaffinity(thread.id) & compute_cores, (process.name(), thread.id)


def test_sigterm_lets_the_worker_finish_its_batch_and_another_resumes(service: Service) -> None:
    service.start_api()
    first = service.start_worker("first")
    service.wait_for("/readyz")
    rows = [chat_line(f"c{i}", f"topic {i}", max_tokens=48) for i in range(400)]
    with service.client() as client:
        file_id = client.post("/v1/files", files={"file": ("c.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        batch = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "batch_size": 16}
        ).json()
        while client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] == 0:
            time.sleep(0.1)
        first.terminate()
        assert first.wait(120) == 0
        stopped_at = client.get(f"/v1/batches/{batch['id']}").json()
        assert stopped_at["status"] == "in_progress"
        assert 0 < stopped_at["request_counts"]["completed"] < 400
        assert stopped_at["request_counts"]["completed"] % 16 == 0  # whole static batches only

        service.start_worker("second")
        done = wait_until_done(client, batch["id"])
        output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
    assert done["request_counts"] == {"total": 400, "completed": 400, "failed": 0}
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    assert all(json.dumps(line["response"]["body"]["choices"][0]["message"]) for line in output)
