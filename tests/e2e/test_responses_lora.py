"""Responses lines and per-line LoRA adapters through the official `openai` SDK against the
service as processes: the API and a generation worker started with two different
adapters (`LORA_MODULES`) and compact JSON. A JSON-schema line's output parses and
matches its schema; lines naming the base model and each adapter run in one job, each
answered as its model with what `LLM.generate` gives for that adapter's lines alone
(its `LoRARequest`, or none) on the run's shared LoRA engine, run directly once the
service is stopped; a line naming
a model nobody serves fails alone, naming `model`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final

import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.responses import Response

from app.jobs.lines import parse_line
from app.jobs.planning import prompt_token_ids
from tests.conftest import LORA_RANK
from tests.e2e.conftest import Service
from tests.helpers import jsonl
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine
TERMINAL = {"completed", "failed", "expired", "cancelled"}
RESPONSES: Final = "/v1/responses"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 8}},
    "required": ["answer"],
    "additionalProperties": False,
}
PROMPTS = ["Say something.", "the cat of the", "a man was in"]
MODELS = ("demo-llama", "pirate", "poet")  # the base model, then each adapter
MAX_TOKENS = 8


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": body}


def rows() -> list[dict[str, Any]]:
    structured = {"format": {"type": "json_schema", "name": "short", "schema": SCHEMA, "strict": True}}
    return [
        line("json", input="Answer in JSON.", instructions="Be brief.", max_output_tokens=24, text=structured),
        *(
            line(f"{model}-{i}", input=prompt, max_output_tokens=MAX_TOKENS, temperature=0, model=model)
            for i, prompt in enumerate(PROMPTS)
            for model in MODELS
        ),
        line("unknown", input="Say something.", max_output_tokens=4, model="gpt-4o"),
    ]


def lines_of(model: str) -> list[dict[str, Any]]:
    return [row for row in rows() if row["custom_id"].startswith(f"{model}-")]


def wait(client: OpenAI, batch_id: str) -> Batch:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(batch_id)


def direct_generations(lora_engine: VllmEngine, adapters: dict[str, str]) -> dict[str, list[str]]:
    """Each model's lines in one `LLM.generate` call with its `LoRARequest` (none for the
    base model), on the run's shared LoRA engine: built from the same settings as the
    service's worker (adapters, rank, compact JSON), so greedy answers must be equal."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = lora_engine.llm
    tokenizer = llm.get_tokenizer()
    requests = {
        name: LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=adapters[name])
        for lora_id, name in enumerate(sorted(adapters), start=1)
    }
    found = {}
    for model in MODELS:
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_token_ids(parse_line(jsonl([row]), 0, RESPONSES), tokenizer))
            for row in lines_of(model)
        ]
        outputs = llm.generate(
            prompts,
            SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
            lora_request=requests.get(model),
            use_tqdm=False,
        )
        found[model] = [out.outputs[0].text for out in outputs]
    return found


def test_responses_and_lora_adapters_through_the_openai_sdk(
    service: Service, lora_engine: VllmEngine, lora_modules: dict[str, str], tmp_path: Path
) -> None:
    adapters = lora_modules  # the demo adapter and one from another seed, unlike it
    modules = ",".join(f"{name}={path}" for name, path in adapters.items())
    service.env.update(LORA_MODULES=modules, COMPACT_JSON="true", MAX_MODEL_LEN="256", MAX_LORA_RANK=str(LORA_RANK))
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
    assert (done.request_counts.completed, done.request_counts.failed) == (1 + len(PROMPTS) * len(MODELS), 1)

    output = {
        json.loads(text)["custom_id"]: json.loads(text)["response"]["body"]
        for text in client.files.content(done.output_file_id or "").text.splitlines()
    }
    [failed] = [json.loads(text) for text in client.files.content(done.error_file_id or "").text.splitlines()]
    assert failed["custom_id"] == "unknown" and failed["response"]["body"]["error"]["param"] == "model"
    answers = {custom_id: Response.model_validate(body) for custom_id, body in output.items()}
    parsed = json.loads(answers["json"].output_text)
    assert set(parsed) == {"answer"} and isinstance(parsed["answer"], str) and len(parsed["answer"]) <= 8
    assert all((answer.usage.output_tokens if answer.usage else 0) > 0 for answer in answers.values())
    got = {}
    for model in MODELS:
        mine = [answers[row["custom_id"]] for row in lines_of(model)]
        assert {answer.model for answer in mine} == {model}
        got[model] = [answer.output_text for answer in mine]
    service.stop()  # the cores go to the reference engine

    expected = direct_generations(lora_engine, adapters)
    for model in MODELS:
        assert got[model] == expected[model], model
    assert got["pirate"] != got["demo-llama"] and got["poet"] != got["pirate"]  # the adapters change answers
