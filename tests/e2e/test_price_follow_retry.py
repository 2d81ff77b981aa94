"""Beyond the hosted batch APIs, as a user does it with `llm-batch` against the running
service: price a job first, read its results while it runs, re-run only its failures."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Service
from tests.e2e.test_cli import llm_batch
from tests.helpers import completion_line, jsonl

pytestmark = pytest.mark.engine

TOO_LONG = "word " * 400  # longer than the test model's 256-token context


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


def test_a_dry_run_prices_the_file_and_queues_nothing(running_service: Service, tmp_path: Path) -> None:
    key = running_service.api_key("pricing")
    prompts = tmp_path / "prompts.jsonl"
    rows = [completion_line(f"p{i}", f"prompt {i}", max_tokens=10) for i in range(9)]
    rows[4]["body"]["prompt"] = TOO_LONG  # type: ignore[index]
    prompts.write_bytes(jsonl(rows))

    priced = llm_batch(running_service, key, "submit", str(prompts), "--dry-run", "--batch-size", "7")
    assert priced.returncode == 1  # one line would fail
    assert "9 lines" in priced.stdout and "80 output tokens at most" in priced.stdout
    assert "ETA unknown: no history" in priced.stdout
    assert "line 5 (p4): This model's maximum context length is 256 tokens" in priced.stderr
    listed = httpx.get(
        f"{running_service.url}/v1/batches", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()
    assert listed["data"] == []


def test_download_follow_reads_lines_while_the_batch_runs(running_service: Service, tmp_path: Path) -> None:
    key = running_service.api_key("follower")
    rows = [completion_line(f"f{i}", f"document {i}", max_tokens=48) for i in range(1200)]
    prompts = tmp_path / "big.jsonl"
    prompts.write_bytes(jsonl(rows))
    batch_id = llm_batch(running_service, key, "submit", str(prompts), "--batch-size", "40").stdout.split()[0]

    out = tmp_path / "follow.jsonl"
    env = {**running_service.env, "LLM_BATCH_URL": running_service.url, "LLM_BATCH_API_KEY": key}
    follower = subprocess.Popen(
        [*llm_batch_argv(), "download", batch_id, "-o", str(out), "--follow"], env=env, stdout=subprocess.PIPE
    )
    client = httpx.Client(base_url=running_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    seen_while_running = 0
    while follower.poll() is None:
        status = client.get(f"/v1/batches/{batch_id}").json()["status"]
        if status == "in_progress" and out.exists():
            seen_while_running = max(seen_while_running, len(out.read_bytes().splitlines()))
        time.sleep(0.2)
    assert follower.returncode == 0
    assert 0 < seen_while_running < 1200  # the consumer had answers before the batch ended
    assert custom_ids(out) == [f"f{i}" for i in range(1200)]

    final = tmp_path / "final.jsonl"
    assert llm_batch(running_service, key, "download", batch_id, "-o", str(final)).returncode == 0
    assert out.read_bytes() == final.read_bytes()  # every line succeeded: the same bytes as the output file


def test_retry_runs_only_the_failures_and_download_merged_fills_them_in(
    running_service: Service, tmp_path: Path
) -> None:
    key = running_service.api_key("retrier")
    rows = [completion_line(f"r{i}", f"prompt {i}", max_tokens=4) for i in range(10)]
    rows[2]["body"]["max_tokens"] = rows[7]["body"]["max_tokens"] = 500  # type: ignore[index]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(jsonl(rows))
    submitted = llm_batch(running_service, key, "submit", str(prompts), "--wait")
    assert "8/10 done, 2 failed" in submitted.stdout
    parent = submitted.stdout.split()[0]

    retried = llm_batch(running_service, key, "retry", parent, "--max-tokens", "6", "--wait")
    assert retried.returncode == 0, retried.stderr
    assert "2/2 done, 0 failed" in retried.stdout

    merged = tmp_path / "merged.jsonl"
    assert llm_batch(running_service, key, "download", parent, "-o", str(merged), "--merged").returncode == 0
    lines = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(10)]
    assert [line["response"]["body"]["usage"]["completion_tokens"] <= 6 for line in lines] == [True] * 10
    assert {lines[2]["response"]["body"]["choices"][0]["finish_reason"]} <= {"length", "stop"}


def llm_batch_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "app.tools.cli"]
