"""Price a job before running it: a dry run plans every line as the worker would."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from app.jobs.lines import parse_line
from app.jobs.planning import prompt_token_ids
from tests.helpers import chat_line, create_batch, jsonl, run_worker_until_idle, upload, wait_for_estimate
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"


def rows() -> list[dict[str, object]]:
    lines = [chat_line(f"c{i}", f"tell me about topic {i}", max_tokens=5 + i, n=1 + i % 2) for i in range(6)]
    lines[1]["body"]["logit_bias"] = {"42": 5}  # type: ignore[index]
    lines[4]["body"]["messages"][1]["content"] = "word " * 400  # type: ignore[index]
    return lines


def dry_run(client: TestClient, file_id: str, **extra: object) -> dict:
    body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", "dry_run": True, **extra}
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 200, response.text
    estimate: dict = response.json()
    assert estimate["object"] == "batch.estimate"
    return estimate


def test_a_dry_run_counts_with_the_models_tokenizer_and_queues_nothing(client: TestClient, engine: VllmEngine) -> None:
    data = rows()
    file = upload(client, jsonl(data))
    estimate = dry_run(client, file["id"], batch_size=4)

    runnable = [row for i, row in enumerate(data) if i not in (1, 4)]
    requests = [parse_line(jsonl([row]).strip(), 0, CHAT) for row in runnable]
    assert estimate["lines"] == 6 and estimate["runnable_lines"] == 4 and estimate["failing_lines"] == 2
    assert estimate["prompt_tokens"] == sum(len(prompt_token_ids(r, engine.tokenizer)) for r in requests)
    assert estimate["requested_output_tokens"] == sum(r.body.max_tokens * r.body.n for r in requests)  # type: ignore[operator]
    assert [(f["line"], f["custom_id"], f["param"]) for f in estimate["failing"]] == [
        (2, "c1", "logit_bias"),
        (5, "c4", "max_tokens"),
    ]
    assert estimate["failing"][1]["code"] == "context_length_exceeded"
    assert estimate["eta_seconds"] is None and estimate["basis"].startswith("no history")
    assert not estimate["would_fail"]
    assert client.get("/v1/batches").json()["data"] == []


def test_a_dry_run_of_a_broken_file_says_the_batch_would_fail(client: TestClient) -> None:
    file = upload(client, b'{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    estimate = dry_run(client, file["id"])
    assert estimate["would_fail"] and estimate["file_errors"][0]["line"] == 2


def test_the_eta_comes_from_what_workers_measured_at_that_batch_size(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    history = [chat_line(f"h{i}", f"warm up {i}", max_tokens=8) for i in range(16)]
    queued = create_batch(client, upload(client, jsonl(history))["id"], endpoint=CHAT, batch_size=8)
    estimate_while_queued = wait_for_estimate(client, queued["id"])
    assert estimate_while_queued["lines"] == 16 and estimate_while_queued["requested_output_tokens"] == 128
    assert estimate_while_queued["prompt_tokens"] > 0 and estimate_while_queued["eta_seconds"] is None
    run_worker_until_idle(engine, settings, store)
    measured = client.get(f"/v1/batches/{queued['id']}/stats").json()["generation_tokens_per_second"]

    file = upload(client, jsonl(rows()))
    at_eight = dry_run(client, file["id"], batch_size=8)
    assert at_eight["tokens_per_second_per_worker"] == pytest.approx(measured, rel=0.01)
    # eta_seconds is rounded to the millisecond, measured to a tenth of a token/s
    expected = at_eight["requested_output_tokens"] / measured
    assert at_eight["eta_seconds"] == pytest.approx(expected, rel=0.02, abs=0.002)
    assert dry_run(client, file["id"], batch_size=3)["eta_seconds"] is None


def test_a_large_queued_batch_is_estimated_from_a_sample_spread_over_its_file(
    settings: Settings, records: Records
) -> None:
    from app.api.main import create_app

    with TestClient(create_app(settings.model_copy(update={"estimate_sample_lines": 4}))) as app_client:
        _, secret = create_key(records, "alice")
        app_client.headers["Authorization"] = f"Bearer {secret}"
        # The first four lines ask for 8 tokens, the rest for 24: a sample of the file's start
        # would say 128 tokens; lines 1, 5, 9 and 13 say the whole file's 320.
        rows = [chat_line(f"s{i}", f"sample {i}", max_tokens=8 if i < 4 else 24) for i in range(16)]
        queued = create_batch(app_client, upload(app_client, jsonl(rows))["id"], endpoint=CHAT)
        estimate = wait_for_estimate(app_client, queued["id"])
    assert estimate["sampled_lines"] == 4
    assert estimate["lines"] == 16 and estimate["requested_output_tokens"] == 4 * 8 + 12 * 24
