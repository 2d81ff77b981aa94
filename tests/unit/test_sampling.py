"""From an OpenAI request body to vLLM SamplingParams keyword arguments."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from app.jobs.endpoints import CHAT_COMPLETIONS, COMPLETIONS, RESPONSES, endpoint_for
from app.jobs.endpoints.base import JobDefaults, ModelLimits, PlanContext, UnsupportedRequest
from app.jobs.endpoints.generate_call import GenerationPlan
from app.jobs.json_schemas import MAX_SCHEMA_NESTING
from app.jobs.lines import parse_line
from app.jobs.planning import line_param, plan_request
from tests.fakes import FixedTokens

DEFAULTS = JobDefaults(max_tokens=64)


def kwargs_of(endpoint: str, **fields: Any) -> dict[str, Any]:
    key = "messages" if endpoint == CHAT_COMPLETIONS else "prompt"
    prompt: Any = [{"role": "user", "content": "hi"}] if key == "messages" else "hi"
    raw = json.dumps({"custom_id": "a", "url": endpoint, "body": {key: prompt, **fields}}).encode()
    kind: Any = endpoint_for(endpoint)
    return kind.sampling(parse_line(raw, 0, endpoint).body, DEFAULTS).engine_kwargs()  # type: ignore[no-any-return]


def refusal(endpoint: str, **fields: Any) -> UnsupportedRequest:
    with pytest.raises(UnsupportedRequest) as caught:
        kwargs_of(endpoint, **fields)
    return caught.value


def test_a_line_without_max_tokens_takes_the_jobs_default_and_sets_nothing_else() -> None:
    assert kwargs_of(COMPLETIONS) == {"max_tokens": 64, "n": 1}


def test_the_lines_own_sampling_fields_are_passed_through() -> None:
    got = kwargs_of(COMPLETIONS, max_tokens=5, temperature=0.5, top_p=0.9, seed=7, n=2, logprobs=3)
    assert got == {"max_tokens": 5, "n": 2, "temperature": 0.5, "top_p": 0.9, "seed": 7, "logprobs": 3}


def test_max_completion_tokens_wins_over_max_tokens_in_chat() -> None:
    assert kwargs_of(CHAT_COMPLETIONS, max_tokens=5, max_completion_tokens=9)["max_tokens"] == 9


def test_a_single_stop_string_becomes_a_list() -> None:
    assert kwargs_of(COMPLETIONS, stop="\n")["stop"] == ["\n"]
    assert kwargs_of(COMPLETIONS, stop=["a", "b"])["stop"] == ["a", "b"]


def test_a_json_schema_response_format_becomes_structured_outputs_json() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert kwargs_of(CHAT_COMPLETIONS, response_format=response_format)["structured_outputs"] == {"json": schema}


def test_a_json_object_response_format_asks_for_any_json_object() -> None:
    got = kwargs_of(CHAT_COMPLETIONS, response_format={"type": "json_object"})
    assert got["structured_outputs"] == {"json_object": True}


def test_a_text_response_format_adds_no_structured_outputs() -> None:
    assert "structured_outputs" not in kwargs_of(CHAT_COMPLETIONS, response_format={"type": "text"})


def test_an_unknown_field_is_refused_naming_the_param() -> None:
    err = refusal(CHAT_COMPLETIONS, tools=[{"type": "function"}])
    assert err.param == "tools" and "'tools'" in err.message


def test_fields_that_change_nothing_offline_are_tolerated() -> None:
    assert kwargs_of(CHAT_COMPLETIONS, stream=False, user="u1", store=True) == {"max_tokens": 64, "n": 1}


def test_streaming_is_refused() -> None:
    assert refusal(COMPLETIONS, stream=True).param == "stream"


def test_top_logprobs_without_logprobs_is_refused() -> None:
    assert refusal(CHAT_COMPLETIONS, top_logprobs=2).param == "top_logprobs"


def test_chat_logprobs_count_top_logprobs() -> None:
    assert kwargs_of(CHAT_COMPLETIONS, logprobs=True, top_logprobs=2)["logprobs"] == 2
    assert kwargs_of(CHAT_COMPLETIONS, logprobs=True)["logprobs"] == 0
    assert "logprobs" not in kwargs_of(CHAT_COMPLETIONS, logprobs=False)


# What vLLM would refuse, refused when the line is planned (so a dry run reports it too)

LIMITS = ModelLimits(max_model_len=256, vocab_size=256)


def planning_refusal(endpoint: str, limits: ModelLimits = LIMITS, **fields: Any) -> UnsupportedRequest:
    key = "messages" if endpoint == CHAT_COMPLETIONS else "prompt"
    prompt: Any = [{"role": "user", "content": "hi"}] if key == "messages" else "hi"
    raw = json.dumps({"custom_id": "a", "url": endpoint, "body": {key: prompt, **fields}}).encode()
    with pytest.raises(UnsupportedRequest) as caught:
        plan_request(raw, 0, endpoint, PlanContext(DEFAULTS, limits, FixedTokens([1, 2, 3])))
    return caught.value


def json_schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "nope"}, "(at /type)"),
        ({"type": "object", "required": "a"}, "'a' is not of type 'array' (at /required)"),
        ({"type": "object", "properties": {"a": 5}}, "(at /properties/a)"),
        ({"type": "string", "pattern": "a{99999999999}"}, "cannot be checked (OverflowError"),
        ({"type": "string", "pattern": "(" * 600 + ")" * 600}, "cannot be checked"),
        ({"type": "string", "pattern": "(("}, "'((' is not a 'regex' (at /pattern)"),
        ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "nope"}, "(at /type)"),
        ({"$schema": ["x"]}, "$schema that is not a URI"),
        (nested(MAX_SCHEMA_NESTING + 1), f"nest at most {MAX_SCHEMA_NESTING} levels"),
    ],
)
def test_a_json_schema_vllm_cannot_compile_is_refused_naming_response_format(schema: Any, words: str) -> None:
    refused = refusal(CHAT_COMPLETIONS, response_format=json_schema_format(schema))
    assert refused.param == "response_format"
    assert refused.message.startswith("The JSON schema in response_format ") and words in refused.message


def test_a_json_schema_valid_as_json_schema_passes_planning_whatever_the_backend_makes_of_it() -> None:
    for schema in (nested(MAX_SCHEMA_NESTING), {"type": "string", "format": "made-up"}, {"$ref": "#/$defs/gone"}):
        assert kwargs_of(COMPLETIONS, response_format=json_schema_format(schema))["structured_outputs"] == {
            "json": schema
        }


@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        (COMPLETIONS, {"logprobs": 21}, "logprobs"),
        (CHAT_COMPLETIONS, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_more_logprobs_than_the_engine_returns_are_refused_per_line(
    endpoint: str, fields: dict[str, Any], param: str
) -> None:
    refused = planning_refusal(endpoint, **fields)
    assert refused.param == param and "at most 20 log probabilities" in refused.message
    assert planning_refusal(endpoint, replace(LIMITS, max_logprobs=5), **{**fields, param: 6}).param == param


def test_as_many_logprobs_as_the_engine_returns_are_planned() -> None:
    raw = json.dumps({"custom_id": "a", "prompt": "hi", "logprobs": 20}).encode()
    planned = plan_request(raw, 0, COMPLETIONS, PlanContext(DEFAULTS, LIMITS, FixedTokens([1])))
    assert isinstance(planned, GenerationPlan) and planned.sampling.logprobs == 20


@pytest.mark.parametrize(
    ("endpoint", "engine_field", "fields", "param"),
    [
        (COMPLETIONS, "structured_outputs", {}, "response_format"),
        (CHAT_COMPLETIONS, "structured_outputs", {}, "response_format"),
        (RESPONSES, "structured_outputs", {}, "text.format"),
        (COMPLETIONS, "logprobs", {}, "logprobs"),
        (CHAT_COMPLETIONS, "logprobs", {}, "top_logprobs"),
        (CHAT_COMPLETIONS, "max_tokens", {"max_completion_tokens": 3}, "max_completion_tokens"),
        (CHAT_COMPLETIONS, "max_tokens", {}, "max_tokens"),
        (RESPONSES, "max_tokens", {}, "max_output_tokens"),
        (COMPLETIONS, "seed", {}, "seed"),
        (COMPLETIONS, "stop_token_ids", {}, None),  # no field of the line sets it
        (COMPLETIONS, None, {}, None),
    ],
)
def test_the_engine_field_refused_is_named_as_the_lines_field(
    endpoint: str, engine_field: str | None, fields: dict[str, Any], param: str | None
) -> None:
    key = {COMPLETIONS: "prompt", CHAT_COMPLETIONS: "messages", RESPONSES: "input"}[endpoint]
    value: Any = [{"role": "user", "content": "hi"}] if key == "messages" else "hi"
    raw = json.dumps({"custom_id": "a", "url": endpoint, "body": {key: value, **fields}}).encode()
    assert line_param(parse_line(raw, 0, endpoint), engine_field) == param
