"""A packed window's order, from its parsed lines: by requested length when the window's
shared prefixes fit in the KV cache together (the prefix cache keeps them whatever the
order), grouped by shared prefix first when they do not."""

from __future__ import annotations

import json

from app.jobs.endpoints.base import JobDefaults
from app.jobs.lines import parse_line
from worker.packing import PREFIX_CACHE_SHARE, PREFIX_GROUP_CHARS, LineFacts, line_facts, packing_order, prefixes_fit

SYSTEM_A = "a" * PREFIX_GROUP_CHARS
SYSTEM_B = "b" * PREFIX_GROUP_CHARS
CHAT = "/v1/chat/completions"


def facts(lines: list[tuple[str, str, int]]) -> list[LineFacts]:
    """Chat lines as (system prompt, question, max_tokens), parsed as the worker parses them."""
    found = []
    for index, (system, question, max_tokens) in enumerate(lines):
        messages = [{"role": "system", "content": system}] if system else []
        body = {"messages": [*messages, {"role": "user", "content": question}], "max_tokens": max_tokens}
        raw = json.dumps({"custom_id": f"c{index}", "method": "POST", "url": CHAT, "body": body}).encode()
        found.append(line_facts(parse_line(raw, index, CHAT), JobDefaults(max_tokens=16)))
    return found


LINES = [
    (SYSTEM_A, "q0", 40),  # 0
    ("", "alone", 5),  # 1: alone with its prefix
    (SYSTEM_B, "q2", 10),  # 2
    (SYSTEM_A, "q3", 8),  # 3
    (SYSTEM_B, "q4", 2),  # 4
    ("", "on its own", 1),  # 5: alone with its prefix
    (SYSTEM_A, "q6", 10),  # 6
]
# What the two shared prefixes hold at most: the bytes of their shortest prompts.
HELD = 2 * (len(f"system\n{SYSTEM_A}\nuser\nq0\n"))


def test_lines_sharing_a_prompt_start_are_one_prefix_and_the_rest_are_not() -> None:
    found = facts(LINES)
    assert found[0].prefix == found[3].prefix == found[6].prefix != found[2].prefix == found[4].prefix
    assert found[1].prefix != found[5].prefix
    assert [line.max_tokens for line in found] == [40, 5, 10, 8, 2, 1, 10]


def test_prefixes_that_fit_in_the_kv_cache_run_by_length_prefix_breaking_ties() -> None:
    cache = int(HELD / PREFIX_CACHE_SHARE) + 1
    assert prefixes_fit(facts(LINES), cache)
    # 10 twice: line 2 (prefix B) and 6 (prefix A) sit by prefix, A (first seen) before B.
    assert packing_order(facts(LINES), cache) == [5, 4, 1, 3, 6, 2, 0]


def test_prefixes_that_do_not_fit_run_grouped_then_by_length_within_each_group() -> None:
    cache = int(HELD / PREFIX_CACHE_SHARE) - 1
    assert not prefixes_fit(facts(LINES), cache)
    assert packing_order(facts(LINES), cache) == [3, 6, 0, 4, 2, 5, 1]


def test_an_engine_that_does_not_say_its_kv_cache_gets_prefixes_grouped() -> None:
    assert packing_order(facts(LINES), None) == [3, 6, 0, 4, 2, 5, 1]


def test_without_shared_prefixes_the_order_is_by_requested_length_either_way() -> None:
    lines = [("", f"question {i}", tokens) for i, tokens in enumerate([30, 4, 16, 4, 128])]
    assert packing_order(facts(lines), None) == packing_order(facts(lines), 10**6) == [1, 3, 2, 0, 4]


def test_a_prompt_of_token_ids_is_grouped_by_its_first_tokens() -> None:
    def completion(index: int, prompt: list[int], max_tokens: int) -> LineFacts:
        body = {"prompt": prompt, "max_tokens": max_tokens}
        raw = json.dumps({"custom_id": f"c{index}", "method": "POST", "url": "/v1/completions", "body": body})
        return line_facts(parse_line(raw.encode(), index, "/v1/completions"), JobDefaults(max_tokens=16))

    shared = list(range(100, 200))
    lines = [completion(0, [*shared, 1], 9), completion(1, [7, 8], 1), completion(2, [*shared, 2], 3)]
    assert lines[0].prefix == lines[2].prefix and lines[0].prompt_size == 101
    assert packing_order(lines, None) == [2, 0, 1]
