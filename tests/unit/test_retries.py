"""A batch's merged output: its own answers with its retries' answers filled in."""

from __future__ import annotations

import json

from app.jobs.retries import RetryOverrides, _merge, _with_overrides


def answer(custom_id: str, text: str) -> bytes:
    return json.dumps({"custom_id": custom_id, "response": text}).encode()


def merged(ids: list[str], own: list[bytes], *retries: list[bytes]) -> list[bytes]:
    return list(_merge(ids, [iter(own), *(iter(r) for r in retries)]))


def test_the_batchs_own_answers_come_out_in_input_order_with_newlines() -> None:
    own = [answer("a", "1"), answer("b", "2"), answer("c", "3")]
    assert merged(["a", "b", "c"], own) == [line + b"\n" for line in own]


def test_a_retried_answer_fills_the_gap_at_its_input_position() -> None:
    own = [answer("a", "1"), answer("c", "3")]
    assert merged(["a", "b", "c"], own, [answer("b", "retry")]) == [
        answer("a", "1") + b"\n",
        answer("b", "retry") + b"\n",
        answer("c", "3") + b"\n",
    ]


def test_a_line_nobody_answered_is_left_out() -> None:
    got = merged(["a", "b", "c"], [answer("a", "1")], [answer("c", "retry")])
    assert got == [answer("a", "1") + b"\n", answer("c", "retry") + b"\n"]


def test_a_retry_of_a_retry_answers_what_the_first_retry_failed_and_the_later_answer_wins() -> None:
    ids = [f"l{i}" for i in range(6)]
    own = [answer("l0", "own"), answer("l3", "own")]
    first = [answer("l1", "first"), answer("l4", "first")]  # l2 and l5 failed again
    second = [answer("l2", "second"), answer("l4", "second"), answer("l5", "second")]
    assert merged(ids, own, first, second) == [
        answer(i, text) + b"\n"
        for i, text in [
            ("l0", "own"),
            ("l1", "first"),
            ("l2", "second"),
            ("l3", "own"),
            ("l4", "second"),
            ("l5", "second"),
        ]
    ]


def test_answers_are_matched_by_custom_id_not_position() -> None:
    assert merged(["a", "b", "c"], [], [answer("c", "retry")]) == [answer("c", "retry") + b"\n"]


def test_a_max_tokens_override_is_written_as_each_endpoints_field() -> None:
    chat = json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": {"max_completion_tokens": 3}})
    assert json.loads(_with_overrides(chat.encode(), RetryOverrides(max_tokens=9), "/v1/chat/completions"))["body"] == {
        "max_tokens": 9
    }
    responses = json.dumps({"custom_id": "a", "input": "hi", "max_output_tokens": 3}).encode()
    rewritten = json.loads(_with_overrides(responses, RetryOverrides(max_tokens=9), "/v1/responses"))
    assert rewritten == {"custom_id": "a", "input": "hi", "max_output_tokens": 9}
