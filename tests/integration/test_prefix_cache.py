"""Shared prefixes run once: with vLLM's prefix caching on, lines that repeat a long system
prompt find it already computed, and the hits are reported per line, per window and per job."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)
SYSTEM = " ".join(["You are a careful assistant who answers questions about the report in plain words."] * 3)


def test_lines_that_share_a_system_prompt_hit_the_prefix_cache_and_usage_says_so(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = [
        {
            "custom_id": f"q{i}",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Q{i}?"}],
        }
        for i in range(24)
    ]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint="/v1/chat/completions", batch_size=8,
                         max_tokens=3)  # fmt: skip
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    per_line = [
        line["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
        for line in download(client, done["output_file_id"])
    ]
    cached = done["usage"]["input_tokens_details"]["cached_tokens"]
    assert cached == sum(per_line) > 0
    assert cached < done["usage"]["input_tokens"]  # the first line of each static batch computed its prompt
    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["engine"]["cached_prompt_tokens"] == cached
