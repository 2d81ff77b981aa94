"""The input format, one line at a time."""

from __future__ import annotations

import json

import pytest

from app.batch_lines import CHAT_COMPLETIONS, COMPLETIONS, ChatBody, FileCheck, LineError, parse_line


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_a_plain_prompt_takes_the_jobs_endpoint() -> None:
    request = parse_line(line({"custom_id": "a", "prompt": "hi"}), 0, COMPLETIONS)
    assert (request.custom_id, request.endpoint, request.plain) == ("a", COMPLETIONS, True)


def test_a_plain_prompt_in_a_chat_job_becomes_one_user_message() -> None:
    request = parse_line(line({"custom_id": "a", "prompt": "hi", "max_tokens": 3}), 4, CHAT_COMPLETIONS)
    assert isinstance(request.body, ChatBody)
    assert [(m.role, m.text()) for m in request.body.messages] == [("user", "hi")]
    assert request.body.max_tokens == 3 and request.index == 4


def test_an_openai_chat_line_with_content_parts() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    request = parse_line(line({"custom_id": "c", "method": "POST", "url": CHAT_COMPLETIONS, "body": body}), 0, None)
    assert isinstance(request.body, ChatBody)
    assert request.body.messages[0].text() == "ab"


@pytest.mark.parametrize(
    ("raw", "message", "param"),
    [
        (b"[1, 2]", "a line must be a JSON object", None),
        (line({"custom_id": 5, "prompt": "x"}), "missing custom_id", "custom_id"),
        (line({"custom_id": "a", "url": "/v1/completions", "body": {}}), "missing body.prompt", "body.prompt"),
        (line({"custom_id": "a", "method": "GET", "url": COMPLETIONS, "body": {"prompt": "x"}}), "method", "method"),
        (
            line({"custom_id": "a", "url": COMPLETIONS, "body": {"prompt": "x", "max_tokens": 0}}),
            "body.max_tokens",
            "body.max_tokens",
        ),
        (line({"custom_id": "a", "messages": []}), "messages", "messages"),
    ],
)
def test_a_broken_line_names_its_number_and_field(raw: bytes, message: str, param: str | None) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(raw, 41, COMPLETIONS if b"messages" not in raw else CHAT_COMPLETIONS)
    assert caught.value.line == 42
    assert message in caught.value.message
    assert caught.value.param == param


def test_a_line_for_another_endpoint_is_refused_when_the_job_is_known() -> None:
    with pytest.raises(LineError, match="does not match the batch's endpoint"):
        parse_line(
            line({"custom_id": "a", "url": CHAT_COMPLETIONS, "body": {"messages": [{"role": "user"}]}}), 0, COMPLETIONS
        )


def test_the_file_check_counts_lines_and_caps_the_errors_it_keeps() -> None:
    check = FileCheck(max_errors=3)
    for i in range(10):
        check.check(b"{oops" if i % 2 else line({"custom_id": f"x{i}", "prompt": "p"}))
    assert check.lines == 10
    assert check.error_count == 5
    assert [e["line"] for e in check.errors] == [2, 4, 6]
