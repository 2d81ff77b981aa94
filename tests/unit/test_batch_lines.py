"""The input format, one line at a time."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from app.jobs.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS
from app.jobs.endpoints.chat import ChatBody
from app.jobs.lines import LineError, parse_line
from app.jobs.upload_check import FileCheck


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


def checked(lines: list[bytes], max_errors: int = 100) -> FileCheck:
    check = FileCheck(max_errors=max_errors)
    for raw in lines:
        check.check(raw)
    check.summary()
    return check


def test_each_repeated_custom_id_names_the_line_it_first_appeared_on() -> None:
    ids = ["a", "b", "a", "c", "b", "a", "d"]
    check = checked([line({"custom_id": i, "prompt": "p"}) for i in ids] + [b"{oops"])
    assert [(e["line"], e["message"]) for e in check.errors] == [
        (3, "duplicate custom_id 'a' (first on line 1)"),
        (5, "duplicate custom_id 'b' (first on line 2)"),
        (6, "duplicate custom_id 'a' (first on line 1)"),
        (8, "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    ]
    assert check.error_count == 4


def test_duplicates_across_many_blocks_are_counted_all_and_kept_first_by_line() -> None:
    lines = [line({"custom_id": f"r{i % 150_000}", "prompt": "p"}) for i in range(150_003)]
    lines[10] = b"{oops"
    check = checked(lines, max_errors=3)
    assert check.error_count == 1 + 3
    assert [(e["line"], e["message"]) for e in check.errors] == [
        (11, "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
        (150_001, "duplicate custom_id 'r0' (first on line 1)"),
        (150_002, "duplicate custom_id 'r1' (first on line 2)"),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        line({"custom_id": "a", "prompt": "x", "max_tokens": "16", "extra": {"k": 1}}),
        line({"custom_id": "a", "input": "x"}),
        line({"custom_id": "a", "input": [[1, 2], [3]], "dimensions": 8}),
        line({"custom_id": "a", "input": []}),
        line({"custom_id": "a", "input": [1, "x"]}),
        line({"custom_id": "a", "input": "x", "prompt": "y"}),
        line({"custom_id": "a", "url": EMBEDDINGS, "body": {"input": ["x", "y"], "encoding_format": "base64"}}),
        line({"custom_id": "a", "url": EMBEDDINGS, "body": {"input": "x", "encoding_format": "hex"}}),
        line({"custom_id": "a", "url": EMBEDDINGS, "body": {"prompt": "x"}}),
        line({"custom_id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}),
        line({"custom_id": "a", "prompt": "x", "url": COMPLETIONS, "body": {"prompt": "y"}}),
        line({"custom_id": "a", "messages": [{"role": "user", "content": "hi", "name": "n"}]}),
        line({"custom_id": "a", "method": "POST", "url": CHAT_COMPLETIONS, "body": {"messages": [{"role": "user"}]}}),
        line({"custom_id": "a", "url": COMPLETIONS, "body": {"messages": [{"role": "user"}]}}),
        line({"custom_id": "a", "url": COMPLETIONS, "body": "prompt"}),
        line({"custom_id": "a", "method": None, "url": COMPLETIONS, "body": {"prompt": "x"}}),
        line({"custom_id": "", "prompt": "x"}),
        line({"custom_id": "é" * 512, "prompt": "x"}),
        line({"custom_id": "é" * 513, "prompt": "x"}),
        b'{"custom_id": "a", "prompt": "x", "custom_id": ""}',
        b'{"custom_id": "a", "prompt": "x", "temperature": NaN}',
        b'{"custom_id": "a", "prompt": "x", "response_format": {"k": NaN}}',
        b'{"custom_id": "a\tb", "prompt": "x"}',
        b'{"custom_id": "a", "prompt": "caf\xe9"}',
        b'\xef\xbb\xbf{"custom_id": "a", "prompt": "x"}',
        b'{"custom_id": "a", "prompt": "x"} x',
        b" \t",
    ],
)
def test_the_upload_check_agrees_with_parse_line(raw: bytes) -> None:
    check = checked([raw])
    try:
        request = parse_line(raw, 0, None)
    except LineError as err:
        assert check.errors == [err.as_error()] or (not raw.strip() and check.errors[0]["message"] == "empty line")
    else:
        assert check.errors == []
        field = {COMPLETIONS: "prompt", CHAT_COMPLETIONS: "messages", EMBEDDINGS: "input"}[request.endpoint]
        used = {f"plain:{field}": 1}
        assert check.first_line_of == (used if request.plain else {request.endpoint: 1})


def test_the_file_check_keeps_about_ten_bytes_a_line() -> None:
    lines = [line({"custom_id": f"request-{i}", "prompt": "p", "max_tokens": 16}) for i in range(200_000)]
    tracemalloc.start()
    try:
        checked(lines)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the digest dict this replaced took 30 MB here


def test_past_the_suspect_ids_kept_a_duplicate_is_still_found_without_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.jobs.upload_check.SUSPECT_IDS_KEPT", 0)
    check = checked([line({"custom_id": i, "prompt": "p"}) for i in ["a", "b", "a"]])
    assert [(e["line"], e["message"]) for e in check.errors] == [(3, "duplicate custom_id (first on line 1)")]
