"""`/v1/responses` lines: parsing, planning (sampling, refusals) and the `response` object
they are answered with, checked against the openai SDK's own type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response as SdkResponse
from pydantic import BaseModel

from app.data.json_values import UploadCheck
from app.jobs.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES
from app.jobs.endpoints.base import JobDefaults, UnsupportedRequest
from app.jobs.endpoints.embeddings import EmbeddingBody
from app.jobs.endpoints.generate_call import Choice, Generation
from app.jobs.endpoints.responses import Responses, ResponsesBody
from app.jobs.lines import LineError, parse_line
from app.jobs.planning import prompt_token_ids
from app.jobs.upload_check import FileCheck, endpoint_mismatch
from app.tools.cli import _guess_endpoint

DEFAULTS = JobDefaults(max_tokens=64)
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def responses_line(custom_id: str = "r", **body: Any) -> bytes:
    return line({"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": {"input": "hi", **body}})


def body_of(raw: bytes, endpoint: str | None = RESPONSES) -> ResponsesBody:
    body = parse_line(raw, 0, endpoint).body
    assert isinstance(body, ResponsesBody)
    return body


def kwargs_of(**fields: Any) -> dict[str, Any]:
    return Responses().sampling(body_of(responses_line(**fields)), DEFAULTS).engine_kwargs()


def refusal(**fields: Any) -> UnsupportedRequest:
    with pytest.raises(UnsupportedRequest) as caught:
        kwargs_of(**fields)
    return caught.value


def strict_sdk(raw: dict[str, Any]) -> SdkResponse:
    """Parses a response object with the SDK's type, and fails on any field the type does
    not declare, at any depth (the SDK's models accept unknown fields silently)."""
    parsed = SdkResponse.model_validate(raw)

    def no_extras(value: Any, where: str) -> None:
        if isinstance(value, BaseModel):
            assert not value.model_extra, f"{where}: fields the SDK does not know: {sorted(value.model_extra)}"
            for name in type(value).model_fields:
                no_extras(getattr(value, name), f"{where}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                no_extras(item, f"{where}[{i}]")

    no_extras(parsed, "response")
    return parsed


# Parsing


def test_a_string_input_is_one_user_message() -> None:
    request = parse_line(responses_line(), 0, RESPONSES)
    assert (request.endpoint, request.plain) == (RESPONSES, False)
    assert isinstance(request.body, ResponsesBody)
    assert request.body.messages() == [{"role": "user", "content": "hi"}]


def test_instructions_come_first_as_a_system_message_and_text_parts_are_joined() -> None:
    messages = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello, "}, {"type": "input_text", "text": "you"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": "and now?"},
    ]
    body = body_of(responses_line(input=messages, instructions="Be brief."))
    assert body.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hello, you"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "and now?"},
    ]


def test_the_prompt_is_rendered_with_the_chat_template() -> None:
    class Template:
        def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return [ord(c) for c in text]

    request = parse_line(responses_line(instructions="sys"), 0, RESPONSES)
    assert prompt_token_ids(request, Template()) == [ord(c) for c in "system:sys|user:hi"]


def test_a_plain_input_line_runs_in_a_responses_job_and_is_found_at_upload() -> None:
    """A plain input line is a responses body in a responses job and an embeddings body in
    an embeddings job; at upload, an embeddings body if it is one, else a responses body."""
    raw = line({"custom_id": "a", "input": "hi", "max_output_tokens": 5})
    request = parse_line(raw, 0, RESPONSES)
    assert (request.endpoint, request.plain) == (RESPONSES, True)
    assert isinstance(request.body, ResponsesBody) and request.body.max_output_tokens == 5
    embedding = parse_line(raw, 0, EMBEDDINGS)
    assert embedding.endpoint == EMBEDDINGS and isinstance(embedding.body, EmbeddingBody)
    assert parse_line(raw, 0, None).endpoint == EMBEDDINGS  # text fits both; the job's endpoint decides

    messages = line({"custom_id": "b", "input": [{"role": "user", "content": "hi"}]})
    at_upload = parse_line(messages, 0, None)
    assert (at_upload.endpoint, at_upload.plain) == (RESPONSES, True)
    assert isinstance(at_upload.body, ResponsesBody)
    with pytest.raises(LineError) as caught:  # not an embeddings input
        parse_line(messages, 0, EMBEDDINGS)
    assert caught.value.param == "input"


def test_a_plain_input_line_that_fits_neither_body_names_the_field_of_the_body_it_looks_like() -> None:
    with pytest.raises(LineError) as caught:
        parse_line(line({"custom_id": "a", "input": [{"role": "bot", "content": "x"}]}), 0, None)
    assert caught.value.param == "input.0.role"
    with pytest.raises(LineError) as caught:
        parse_line(line({"custom_id": "a", "input": [1, "x"]}), 0, None)
    assert caught.value.param == "input" and "a list of token ids" in caught.value.message


def test_a_plain_prompt_in_a_responses_job_becomes_its_input() -> None:
    body = body_of(line({"custom_id": "a", "prompt": "hi"}))
    assert body.messages() == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("raw", "endpoint", "message", "param"),
    [
        (line({"custom_id": "a", "input": "hi"}), CHAT_COMPLETIONS, "input given", "input"),
        (line({"custom_id": "a", "input": "hi"}), COMPLETIONS, "input given", "input"),
        (line({"custom_id": "a", "messages": [{"role": "user", "content": "x"}]}), RESPONSES, "messages", "messages"),
        (line({"custom_id": "a", "url": RESPONSES, "body": {"prompt": "x"}}), RESPONSES, "missing body.input", None),
        (responses_line(input=[{"role": "bot", "content": "x"}]), RESPONSES, "body.input.0.role", None),
        (responses_line(input=[{"role": "user"}]), RESPONSES, "needs a role and content", "body.input.0"),
        (responses_line(input=[]), RESPONSES, "at least 1 item", "body.input"),
        (responses_line(input=5), RESPONSES, "a string or a list of messages", "body.input"),
        (responses_line(input=[{"role": "user", "content": [{"type": "input_text"}]}]), RESPONSES, "needs text", None),
        (responses_line(max_output_tokens=0), RESPONSES, "body.max_output_tokens", "body.max_output_tokens"),
        (responses_line(metadata={"k": 1}), RESPONSES, "body.metadata.k", "body.metadata.k"),
        (responses_line(), CHAT_COMPLETIONS, "does not match", "url"),
    ],
)
def test_a_broken_responses_line_names_its_field(raw: bytes, endpoint: str, message: str, param: str | None) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(raw, 2, endpoint)
    assert caught.value.line == 3
    assert message in caught.value.message
    if param is not None:
        assert caught.value.param == param


# Planning


def test_max_output_tokens_temperature_and_top_p_become_sampling() -> None:
    assert kwargs_of(max_output_tokens=7, temperature=0, top_p=0.5) == {
        "max_tokens": 7,
        "n": 1,
        "temperature": 0,
        "top_p": 0.5,
    }


def test_a_line_without_max_output_tokens_takes_the_jobs_default() -> None:
    assert kwargs_of() == {"max_tokens": 64, "n": 1}


def test_a_json_schema_text_format_becomes_structured_outputs_json() -> None:
    text = {"format": {"type": "json_schema", "name": "count", "schema": SCHEMA, "strict": True}}
    assert kwargs_of(text=text)["structured_outputs"] == {"json": SCHEMA}


def test_json_object_and_text_formats() -> None:
    assert kwargs_of(text={"format": {"type": "json_object"}})["structured_outputs"] == {"json_object": True}
    assert "structured_outputs" not in kwargs_of(text={"format": {"type": "text"}})


@pytest.mark.parametrize(
    ("text_format", "param"),
    [
        ({"type": "json_schema", "schema": SCHEMA}, "text.format.name"),
        ({"type": "json_schema", "name": "x", "schema": "{}"}, "text.format.schema"),
        ({"type": "json_schema", "name": "x", "schema": {"type": "nope"}}, "text.format"),  # not JSON Schema
        ({"type": "grammar", "grammar": "x"}, "text.format.type"),
        ("json", "text.format"),
    ],
)
def test_a_text_format_that_cannot_be_honoured_is_refused(text_format: Any, param: str) -> None:
    assert refusal(text={"format": text_format}).param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"background": True}, "background"),
        ({"stream": True}, "stream"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"seed": 1}, "seed"),
        ({"text": {"format": {"type": "text"}, "verbosity": "low"}}, "text.verbosity"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input.0.content.0.type",
        ),
    ],
)
def test_what_an_offline_batch_cannot_do_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    refused = refusal(**fields)
    assert refused.param == param
    assert refused.code == "invalid_request"


def test_fields_that_change_nothing_offline_are_tolerated() -> None:
    tolerated = {
        "model": "demo-llama",
        "user": "u",
        "metadata": {"k": "v"},
        "store": True,
        "stream": False,
        "background": False,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "service_tier": "auto",
        "truncation": "disabled",
        "reasoning": None,
    }
    assert kwargs_of(**tolerated) == {"max_tokens": 64, "n": 1}


# The upload check


@pytest.mark.parametrize(
    ("raw", "used"),
    [
        (responses_line(), {RESPONSES: 1}),
        (line({"custom_id": "a", "input": [{"role": "user", "content": "x"}]}), {"plain:input": 1}),
        (line({"custom_id": "a", "input": "x", "instructions": "Be brief."}), {"plain:input": 1}),
    ],
)
def test_the_upload_check_records_what_a_responses_line_needs(raw: bytes, used: dict[str, int]) -> None:
    check = FileCheck(max_errors=10)
    check.check(raw)
    summary = check.summary()
    assert summary.errors == [] and summary.first_line_of == used


def test_a_file_of_plain_input_lines_runs_on_responses_and_embeddings_only() -> None:
    validation = UploadCheck(first_line_of={"plain:input": 3})
    assert endpoint_mismatch(validation, RESPONSES) is None
    assert endpoint_mismatch(validation, EMBEDDINGS) is None
    assert endpoint_mismatch(UploadCheck(first_line_of={"plain:prompt": 1}), RESPONSES) is None
    refused = endpoint_mismatch(validation, CHAT_COMPLETIONS)
    assert refused is not None and (refused.line, refused.param) == (3, "input")
    messages = endpoint_mismatch(UploadCheck(first_line_of={"plain:messages": 1}), RESPONSES)
    assert messages is not None and messages.param == "messages"


# The answer


def answer(raw: bytes, text: str = "Bonjour", finish_reason: str = "stop", model: str = "demo-llama") -> dict[str, Any]:
    request = parse_line(raw, 0, RESPONSES)
    choice = Choice(text=text, completion_tokens=4, finish_reason=finish_reason)
    generation = Generation(prompt_tokens=11, choices=[choice])
    output = json.loads(request.answer(generation, model))
    assert output["custom_id"] == request.custom_id and output["error"] is None
    assert output["response"]["status_code"] == 200
    body: dict[str, Any] = output["response"]["body"]
    return body


def test_the_answer_is_a_response_object_the_sdk_parses_strictly() -> None:
    body = answer(responses_line(instructions="Be brief.", max_output_tokens=16, metadata={"k": "v"}, user="u"))
    parsed = strict_sdk(body)
    assert parsed.object == "response" and parsed.id.startswith("resp_")
    assert (parsed.status, parsed.incomplete_details, parsed.error) == ("completed", None, None)
    assert parsed.model == "demo-llama" and parsed.instructions == "Be brief." and parsed.max_output_tokens == 16
    assert parsed.metadata == {"k": "v"} and parsed.user == "u"
    message = parsed.output[0]
    assert message.type == "message" and message.id.startswith("msg_")
    assert (message.role, message.status) == ("assistant", "completed")
    assert [(part.type, part.text, part.annotations) for part in message.content] == [("output_text", "Bonjour", [])]
    assert parsed.output_text == "Bonjour"
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (11, 4, 15)
    assert parsed.usage.input_tokens_details.cached_tokens == 0
    assert parsed.usage.output_tokens_details.reasoning_tokens == 0


def test_an_answer_cut_by_length_is_incomplete_for_max_output_tokens() -> None:
    parsed = strict_sdk(answer(responses_line(), finish_reason="length"))
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_the_answer_echoes_the_text_format() -> None:
    text = {"format": {"type": "json_schema", "name": "count", "schema": SCHEMA, "strict": True}}
    parsed = strict_sdk(answer(responses_line(text=text), text='{"n": 3}'))
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.model_dump(by_alias=True, exclude_none=True) == text["format"]
    assert strict_sdk(answer(responses_line())).text.format.type == "text"  # type: ignore[union-attr]


def test_a_line_that_named_an_adapter_is_answered_as_that_model() -> None:
    assert answer(responses_line(model="demo-lora"))["model"] == "demo-lora"


def test_the_cli_guesses_responses_for_plain_input_messages_and_embeddings_for_text(tmp_path: Path) -> None:
    cases = {
        "messages.jsonl": ({"custom_id": "a", "input": [{"role": "user", "content": "hi"}]}, RESPONSES),
        "text.jsonl": ({"custom_id": "a", "input": "hi"}, EMBEDDINGS),
        "tokens.jsonl": ({"custom_id": "a", "input": [[1, 2]]}, EMBEDDINGS),
    }
    for name, (first, endpoint) in cases.items():
        path = tmp_path / name
        path.write_bytes(line(first) + b"\n")
        assert _guess_endpoint(path) == endpoint
