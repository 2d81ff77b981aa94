"""Responses lines and per-line LoRA adapters through the official `openai` SDK against the
service as processes: the API and a generation worker started with two adapters
(`LORA_MODULES`) and compact JSON. A JSON-schema line's output parses and matches its
schema; lines naming the base model and each adapter run in one job, each answered as
its model; a line naming a model nobody serves fails alone, naming `model`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.responses import Response

from tests.conftest import DEMO_LORA
from tests.e2e.conftest import Service
from tests.helpers import jsonl

pytestmark = pytest.mark.engine
TERMINAL = {"completed", "failed", "expired", "cancelled"}
RESPONSES = "/v1/responses"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 8}},
    "required": ["answer"],
    "additionalProperties": False,
}
LORA = DEMO_LORA


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": body}


def rows() -> list[dict[str, Any]]:
    structured = {"format": {"type": "json_schema", "name": "short", "schema": SCHEMA, "strict": True}}
    return [
        line("json", input="Answer in JSON.", instructions="Be brief.", max_output_tokens=24, text=structured),
        line("base", input="Say something.", max_output_tokens=4, temperature=0, model="demo-llama"),
        line("pirate", input="Say something.", max_output_tokens=4, temperature=0, model="pirate"),
        line("poet", input="Say something.", max_output_tokens=4, temperature=0, model="poet"),
        line("unknown", input="Say something.", max_output_tokens=4, model="gpt-4o"),
    ]


def wait(client: OpenAI, batch_id: str) -> Batch:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(batch_id)


def test_responses_and_lora_adapters_through_the_openai_sdk(
    service: Service, demo_model: Path, demo_lora: Path, tmp_path: Path
) -> None:
    service.env.update(LORA_MODULES=f"pirate={LORA},poet={LORA}", COMPACT_JSON="true", MAX_MODEL_LEN="256")
    service.start_api()
    service.start_worker()
    service.wait_for("/readyz")

    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("sdk-user"), max_retries=0)
    path = tmp_path / "responses.jsonl"
    path.write_bytes(jsonl(rows()))
    file = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=RESPONSES, completion_window="24h")
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 1)

    output = {
        json.loads(text)["custom_id"]: json.loads(text)["response"]["body"]
        for text in client.files.content(done.output_file_id or "").text.splitlines()
    }
    [failed] = [json.loads(text) for text in client.files.content(done.error_file_id or "").text.splitlines()]
    assert failed["custom_id"] == "unknown" and failed["response"]["body"]["error"]["param"] == "model"
    answers = {custom_id: Response.model_validate(body) for custom_id, body in output.items()}
    parsed = json.loads(answers["json"].output_text)
    assert set(parsed) == {"answer"} and isinstance(parsed["answer"], str) and len(parsed["answer"]) <= 8
    assert [answers[name].model for name in ("base", "pirate", "poet")] == ["demo-llama", "pirate", "poet"]
    assert all(answers[name].usage is not None and answers[name].usage.output_tokens > 0 for name in answers)
