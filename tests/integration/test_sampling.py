"""OpenAI request fields reach vLLM's SamplingParams and come back in OpenAI's shapes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import chat_line, completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine


def run(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, rows: list, endpoint: str
) -> dict:  # type: ignore[type-arg]
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint=endpoint)
    run_worker_until_idle(engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    out = {line["custom_id"]: line for line in download(client, done["output_file_id"])}
    if done["error_file_id"]:
        out.update({line["custom_id"]: line for line in download(client, done["error_file_id"])})
    return out


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_completion_fields(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine) -> None:
    rows = [
        completion_line("n3", "hello", max_tokens=4, n=3, temperature=1.0, seed=7),
        completion_line("seeded-a", "same", max_tokens=8, temperature=1.0, seed=42),
        completion_line("seeded-b", "same", max_tokens=8, temperature=1.0, seed=42),
        completion_line("penalties", "x", max_tokens=4, presence_penalty=1.5, frequency_penalty=-0.5),
        completion_line("logprobs", "y", max_tokens=3, logprobs=2),
        completion_line("stop", "z", max_tokens=20, stop=["e"]),
        completion_line("bias", "z", max_tokens=2, logit_bias={"1": 5}),
    ]
    out = run(client, settings, store, engine, rows, "/v1/completions")

    n3 = out["n3"]["response"]["body"]
    assert [c["index"] for c in n3["choices"]] == [0, 1, 2]
    assert 3 <= n3["usage"]["completion_tokens"] <= 3 * 4
    text = lambda cid: out[cid]["response"]["body"]["choices"][0]["text"]  # noqa: E731
    assert text("seeded-a") == text("seeded-b")
    lp = out["logprobs"]["response"]["body"]["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert all(len(top) <= 2 for top in lp["top_logprobs"]) and all(p <= 0 for p in lp["token_logprobs"])
    assert "e" not in text("stop")
    refused = out["bias"]["response"]
    assert refused["status_code"] == 400 and "logit_bias" in refused["body"]["error"]["message"]


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_chat_fields(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    rows = [
        chat_line("logprobs", "q", max_completion_tokens=3, logprobs=True, top_logprobs=2),
        chat_line(
            "json",
            "q",
            max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        ),
        chat_line("tools", "q", max_tokens=2, tools=[{"type": "function", "function": {"name": "f"}}]),
    ]
    out = run(client, settings, store, engine, rows, "/v1/chat/completions")

    choice = out["logprobs"]["response"]["body"]["choices"][0]
    assert out["logprobs"]["response"]["body"]["usage"]["completion_tokens"] <= 3
    content = choice["logprobs"]["content"]
    assert len(content) == out["logprobs"]["response"]["body"]["usage"]["completion_tokens"]
    assert all(len(c["top_logprobs"]) <= 2 and c["bytes"] == list(c["token"].encode()) for c in content)
    made = out["json"]["response"]["body"]["choices"][0]
    if made["finish_reason"] == "stop":  # a random model may run out of tokens first
        assert isinstance(json.loads(made["message"]["content"])["a"], int)
    else:
        assert made["message"]["content"].lstrip().startswith("{")
    assert out["tools"]["response"]["status_code"] == 400


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_sampled_json_with_a_length_limited_string_is_strict_json(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    """JSON allows no raw control character in a string, and a strict parser (Python's
    json.loads, most clients) refuses one. Sampled hot from a random model, a string with a
    maxLength once got one through: the grammar for a length-limited string allowed any
    byte but a quote, a backslash or a newline (xgrammar's; the guidance backend's follows
    JSON)."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 8}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    hot_json = {"type": "json_schema", "json_schema": {"name": "short", "schema": schema}}
    rows = [
        chat_line(f"hot-{i}", "Answer in JSON.", max_tokens=64, temperature=2.0, seed=i, response_format=hot_json)
        for i in range(160)
    ]
    out = run(client, settings, store, engine, rows, "/v1/chat/completions")

    finished = [line["response"]["body"]["choices"][0] for line in out.values()]
    finished = [choice for choice in finished if choice["finish_reason"] == "stop"]
    assert len(finished) >= len(rows) // 4  # hot sampling spends some lines' tokens on whitespace
    refused = []
    for choice in finished:
        try:
            answer = json.loads(choice["message"]["content"])  # strict: no raw control character
        except json.JSONDecodeError as exc:
            refused.append(f"{choice['message']['content']!r}: {exc}")
            continue
        assert set(answer) == {"answer"} and len(answer["answer"]) <= 8
    assert not refused, f"{len(refused)} of {len(finished)} answers are not JSON: {refused[:3]}"
