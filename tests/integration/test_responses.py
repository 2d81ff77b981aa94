"""A `/v1/responses` batch end to end on the real engine: the same answer as the chat line
it amounts to, per-line refusals, dry runs. Structured outputs from a JSON schema run in
tests/integration/test_lora.py, on the engine with COMPACT_JSON."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response as SdkResponse

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import chat_line, create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = [pytest.mark.engine, pytest.mark.parametrize("store", ["local"], indirect=True)]

RESPONSES = "/v1/responses"


def responses_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": {"input": "hi", **body}}


def run(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, rows: list[Any]) -> dict:  # type: ignore[type-arg]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint=RESPONSES)
    run_worker_until_idle(engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    out = {line["custom_id"]: line for line in download(client, done["output_file_id"])}
    if done["error_file_id"]:
        out.update({line["custom_id"]: line for line in download(client, done["error_file_id"])})
    assert len(out) == len(rows)
    return out


def test_a_responses_line_answers_as_the_chat_line_it_amounts_to(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    # chat_line sends the system message "Be brief." then the user's content.
    chat = chat_line("chat", "tell me about the cat", temperature=0, max_tokens=12)
    batch = create_batch(client, upload(client, jsonl([chat]))["id"], endpoint="/v1/chat/completions")
    run_worker_until_idle(engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    expected = download(client, done["output_file_id"])[0]["response"]["body"]

    parts = [{"type": "input_text", "text": "tell me "}, {"type": "input_text", "text": "about the cat"}]
    rows = [
        responses_line(
            "as-chat",
            instructions="Be brief.",
            input=[{"role": "user", "content": parts}],
            temperature=0,
            max_output_tokens=12,
        ),
        {
            "custom_id": "plain",
            "instructions": "Be brief.",
            "input": "tell me about the cat",
            "temperature": 0,
            "max_output_tokens": 12,
        },
    ]
    out = run(client, settings, store, engine, rows)
    for custom_id in ("as-chat", "plain"):
        body = out[custom_id]["response"]["body"]
        parsed = SdkResponse.model_validate(body)
        assert parsed.output_text == expected["choices"][0]["message"]["content"]
        assert parsed.usage is not None
        assert parsed.usage.input_tokens == expected["usage"]["prompt_tokens"]
        assert parsed.usage.output_tokens == expected["usage"]["completion_tokens"]
        cut = expected["choices"][0]["finish_reason"] == "length"
        assert parsed.status == ("incomplete" if cut else "completed")
        assert (parsed.incomplete_details is not None) == cut


def test_what_a_line_cannot_do_fails_that_line_alone_naming_the_field(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = [
        responses_line("ok", max_output_tokens=3),
        responses_line("unknown-model", model="gpt-4o", max_output_tokens=3),
        responses_line("tools", tools=[{"type": "function", "name": "f", "parameters": {}}]),
        responses_line("previous", previous_response_id="resp_123"),
        responses_line("image", input=[{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]),
        responses_line("base-model", model="demo-llama", max_output_tokens=3),
    ]
    out = run(client, settings, store, engine, rows)
    for custom_id in ("ok", "base-model"):
        assert out[custom_id]["response"]["status_code"] == 200
        assert out[custom_id]["response"]["body"]["model"] == "demo-llama"
    refused = {
        custom_id: (
            out[custom_id]["response"]["body"]["error"]["param"],
            out[custom_id]["response"]["body"]["error"]["code"],
        )
        for custom_id in ("unknown-model", "tools", "previous", "image")
    }
    assert refused == {
        "unknown-model": ("model", "model_not_found"),
        "tools": ("tools", "invalid_request"),
        "previous": ("previous_response_id", "invalid_request"),
        "image": ("input.0.content.0.type", "invalid_request"),
    }


def test_a_dry_run_of_a_responses_batch_names_the_failing_lines(client: TestClient) -> None:
    rows = [responses_line("ok", max_output_tokens=5), responses_line("unknown-model", model="gpt-4o")]
    file = upload(client, jsonl(rows))
    body = {"input_file_id": file["id"], "endpoint": RESPONSES, "completion_window": "24h", "dry_run": True}
    estimate = client.post("/v1/batches", json=body).json()
    assert (estimate["lines"], estimate["runnable_lines"], estimate["requested_output_tokens"]) == (2, 1, 5)
    assert [(f["line"], f["custom_id"], f["param"], f["code"]) for f in estimate["failing"]] == [
        (2, "unknown-model", "model", "model_not_found")
    ]


def test_a_file_of_plain_input_lines_fails_a_chat_batch(client: TestClient) -> None:
    file = upload(client, jsonl([{"custom_id": "a", "input": "hi"}]))
    batch = create_batch(client, file["id"], endpoint="/v1/chat/completions")
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["param"] == "input"
