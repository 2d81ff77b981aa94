"""From an OpenAI request body to vLLM SamplingParams keyword arguments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.jobs.lines import CHAT_COMPLETIONS, COMPLETIONS, parse_line
from app.jobs.planning import JobDefaults, UnsupportedRequest, sampling_kwargs

DEFAULTS = JobDefaults(max_tokens=64)


def kwargs_of(endpoint: str, **fields: Any) -> dict[str, Any]:
    key = "messages" if endpoint == CHAT_COMPLETIONS else "prompt"
    prompt: Any = [{"role": "user", "content": "hi"}] if key == "messages" else "hi"
    raw = json.dumps({"custom_id": "a", "url": endpoint, "body": {key: prompt, **fields}}).encode()
    return sampling_kwargs(parse_line(raw, 0, endpoint).body, DEFAULTS)


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
