"""LoRA adapters per line on the real CPU engine (`lora_engine`: the demo model with two
adapters and COMPACT_JSON), and `/v1/responses` structured outputs on that engine.

Lines for the base model and both adapters share one static batch, and each answer is
the one vLLM gives for that adapter alone; base-model lines also equal the engine
without LoRA (which vLLM 0.32's CPU kernels got wrong with every adapter slot taken:
`worker.adapters`)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response as SdkResponse

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.jobs.endpoints.generate_call import Sampling
from app.jobs.lines import parse_line
from app.jobs.planning import prompt_token_ids
from tests.helpers import create_batch, download, jsonl, run_worker_until_idle, upload
from tests.integration.conftest import make_settings
from worker.engine import VllmEngine

pytestmark = [pytest.mark.engine, pytest.mark.parametrize("store", ["local"], indirect=True)]

RESPONSES = "/v1/responses"
PROMPTS = ["the cat of the", "a man was in", "is was for on", "tell me about the", "the cat of the", "by the way"]
MODELS = [None, "pirate", "poet"]  # None: the base model
SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["colour", "ok"],
    "additionalProperties": False,
}


@pytest.fixture
def settings(database_url: str, store: ObjectStore, lora_modules: dict[str, str]) -> Settings:
    """The API knows the adapters too: it checks each line's model when it prices a batch."""
    return make_settings(database_url, store, lora_modules=lora_modules)


def responses_line(custom_id: str, prompt: str, model: str | None, **body: Any) -> dict[str, Any]:
    named = {"model": model} if model else {}
    return {"custom_id": custom_id, "url": RESPONSES, "body": {"input": prompt, **named, **body}}


def run(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, rows: list[Any]) -> dict:  # type: ignore[type-arg]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint=RESPONSES, batch_size=64)
    run_worker_until_idle(engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    out = {line["custom_id"]: line for line in download(client, done["output_file_id"])}
    if done["error_file_id"]:
        out.update({line["custom_id"]: line for line in download(client, done["error_file_id"])})
    return out


def lines_for(rows: list[dict[str, Any]], model: str | None) -> list[dict[str, Any]]:
    return [row for row in rows if row["body"].get("model") == model]


def alone(engine: VllmEngine, rows: list[dict[str, Any]], model: str | None) -> list[str]:
    """What vLLM answers for these lines in one `LLM.generate` call with one adapter (or none)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [
        TokensPrompt(prompt_token_ids=prompt_token_ids(parse_line(jsonl([row]), 0, None), engine.tokenizer))
        for row in rows
    ]
    adapter = engine.adapters[model] if model else None
    outputs = engine.llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=8), lora_request=adapter, use_tqdm=False
    )
    return [out.outputs[0].text for out in outputs]


def test_lines_for_different_adapters_share_a_static_batch_and_answer_as_each_adapter_alone(
    client: TestClient,
    settings: Settings,
    store: ObjectStore,
    lora_engine: VllmEngine,
    engine: VllmEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        responses_line(f"{i}-{model or 'base'}", prompt, model, temperature=0, max_output_tokens=8)
        for i, prompt in enumerate(PROMPTS)
        for model in MODELS
    ]
    rows.insert(4, responses_line("unknown", "the cat of the", "gpt-4o", temperature=0, max_output_tokens=8))
    calls: list[list[str | None]] = []
    enqueue = lora_engine.enqueue  # a static batch enters the engine (overlapped, the default)

    def spy(prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> Any:
        calls.append([line.lora_adapter for line in sampling])
        return enqueue(prompts, sampling, priority)

    monkeypatch.setattr(lora_engine, "enqueue", spy)
    out = run(client, settings, store, lora_engine, rows)

    assert len(calls) == 1 and sorted(calls[0], key=str) == sorted(MODELS * len(PROMPTS), key=str)  # one static batch
    refused = out.pop("unknown")["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "model"
    assert refused["body"]["error"]["code"] == "model_not_found"
    answers: dict[str | None, list[str]] = {}
    for model in MODELS:
        bodies = [out[f"{i}-{model or 'base'}"]["response"]["body"] for i in range(len(PROMPTS))]
        assert {body["model"] for body in bodies} == {model or "demo-llama"}
        answers[model] = [SdkResponse.model_validate(body).output_text for body in bodies]
        assert answers[model] == alone(lora_engine, lines_for(rows, model), model), model
    assert answers[None] == alone(engine, lines_for(rows, None), None)  # the engine without LoRA
    assert answers["pirate"] != answers[None] and answers["poet"] != answers["pirate"]  # adapters change answers


def test_a_json_schema_format_gives_json_that_matches_the_schema(
    client: TestClient, settings: Settings, store: ObjectStore, lora_engine: VllmEngine
) -> None:
    text = {"format": {"type": "json_schema", "name": "pick", "schema": SCHEMA, "strict": True}}
    rows = [
        responses_line(f"json-{i}-{model}", prompt, model, text=text, temperature=0, max_output_tokens=64)
        for i, prompt in enumerate(PROMPTS[:3])
        for model in MODELS
    ]
    rows.append(
        {"custom_id": "plain", "input": [{"role": "user", "content": "pick"}], "text": text, "max_output_tokens": 64}
    )
    out = run(client, settings, store, lora_engine, rows)
    assert len(out) == len(rows)
    for custom_id, line in out.items():
        assert line["response"]["status_code"] == 200, line
        parsed = SdkResponse.model_validate(line["response"]["body"])
        assert parsed.status == "completed", (custom_id, parsed.output_text)  # the grammar ended it
        jsonschema.validate(json.loads(parsed.output_text), SCHEMA)


def test_a_dry_run_fails_only_the_line_naming_an_unknown_model(client: TestClient) -> None:
    rows = [responses_line(str(i), "hi", model, max_output_tokens=4) for i, model in enumerate([*MODELS, "gpt-4o"])]
    body = {"input_file_id": upload(client, jsonl(rows))["id"], "endpoint": RESPONSES, "completion_window": "24h"}
    estimate = client.post("/v1/batches", json={**body, "dry_run": True}).json()
    assert (estimate["runnable_lines"], estimate["requested_output_tokens"]) == (3, 12)
    assert [(f["line"], f["param"], f["code"]) for f in estimate["failing"]] == [(4, "model", "model_not_found")]
    assert "'pirate', 'poet'" in estimate["failing"][0]["message"]


def test_a_batch_for_an_adapter_is_refused_with_where_to_name_it(client: TestClient) -> None:
    file = upload(client, jsonl([responses_line("a", "hi", None)]))
    body = {"input_file_id": file["id"], "endpoint": RESPONSES, "completion_window": "24h", "model": "pirate"}
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and "body.model" in error["message"]
