"""A packed window runs lines that share the start of their prompt together (the engine's
prefix cache computes it once for them), then the rest, each group by requested length."""

from __future__ import annotations

from app.jobs.lines import parse_line
from worker.shard_runner import PREFIX_GROUP_TOKENS, PreparedWindow, packing_order

SYSTEM_A = list(range(100, 100 + PREFIX_GROUP_TOKENS))
SYSTEM_B = list(range(500, 500 + PREFIX_GROUP_TOKENS))


def window(lines: list[tuple[list[int], int]]) -> PreparedWindow:
    """A window of runnable lines: (prompt token ids, max_tokens) each."""
    prepared = PreparedWindow(seq=0, first_line=0, next_line=len(lines))
    for index, (prompt, max_tokens) in enumerate(lines):
        prepared.runnable.append(parse_line(b'{"custom_id": "c%d", "prompt": "x"}' % index, index, "/v1/completions"))
        prepared.prompts.append(prompt)
        prepared.sampling.append({"max_tokens": max_tokens})
    return prepared


def test_lines_sharing_a_prompt_prefix_run_together_and_by_length_within_their_group() -> None:
    lines = [
        ([*SYSTEM_A, 1, 2], 40),  # 0
        ([7, 8, 9], 5),  # 1: alone with its prefix
        ([*SYSTEM_B, 3], 10),  # 2
        ([*SYSTEM_A, 4], 8),  # 3
        ([*SYSTEM_B, 5, 6, 7], 2),  # 4
        ([9, 9], 1),  # 5: alone with its prefix
    ]
    assert packing_order(window(lines)) == [3, 0, 4, 2, 5, 1]


def test_without_shared_prefixes_the_order_is_by_requested_length() -> None:
    lines = [([i, i + 1], tokens) for i, tokens in enumerate([30, 4, 16, 4, 128])]
    assert packing_order(window(lines)) == [1, 3, 2, 0, 4]
