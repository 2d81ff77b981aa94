"""The `llm-batch` command does what a user does all day, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Service
from tests.helpers import completion_line, jsonl

pytestmark = pytest.mark.engine


def llm_batch(service: Service, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**service.env, "LLM_BATCH_URL": service.url, "LLM_BATCH_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_submit_wait_status_list_download(running_service: Service, tmp_path: Path) -> None:
    key = running_service.api_key("cli-user")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(jsonl([completion_line(f"p{i}", f"prompt {i}", max_tokens=3) for i in range(20)]))

    submitted = llm_batch(running_service, key, "submit", str(prompts), "--batch-size", "4", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.splitlines()[0]
    assert batch_id.startswith("batch_")
    assert "20/20 done" in submitted.stdout
    assert "line/s" in submitted.stderr or "20/20" in submitted.stderr  # the progress bar

    status = llm_batch(running_service, key, "status", batch_id, "--json")
    assert json.loads(status.stdout)["status"] == "completed"
    assert batch_id in llm_batch(running_service, key, "list").stdout

    out = tmp_path / "out.jsonl"
    assert llm_batch(running_service, key, "download", batch_id, "-o", str(out)).returncode == 0
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == [f"p{i}" for i in range(20)]


def test_a_bad_file_is_reported_with_its_lines(running_service: Service, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"custom_id": "a", "prompt": "x"}\n{oops\n')
    result = llm_batch(running_service, running_service.api_key("cli-user"), "submit", str(bad))
    assert result.returncode == 1
    assert "line 2: not valid JSON" in result.stderr


def test_keys_create_and_revoke(running_service: Service) -> None:
    created = llm_batch(running_service, "", "keys", "create", "--owner", "erin")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert llm_batch(running_service, secret, "list").returncode == 0
    assert llm_batch(running_service, "", "keys", "revoke", secret[:9]).returncode == 0
    time.sleep(float(running_service.env["KEY_CACHE_SECONDS"]) + 0.1)  # the API trusts a verified key this long
    refused = llm_batch(running_service, secret, "list")
    assert refused.returncode == 2 and "401" in refused.stderr
