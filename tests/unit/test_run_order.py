"""The order a job's lines run in (app.jobs.run_order): lines whose prompts start alike run
side by side across the whole job; a file already grouped keeps its order."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.storage import LocalStore, read_lines
from app.jobs.run_order import grouped_order, order_bytes, prefix_path, read_order, write_run_input
from app.jobs.uploads import lines_from


def _paths(prompts: list[str]) -> list[tuple[int, ...]]:
    return [prefix_path(prompt) for prompt in prompts]


def test_a_question_major_file_runs_document_by_document_in_order_of_first_appearance() -> None:
    documents = [f"Document {d}: " + "words " * 300 for d in range(3)]  # past the first level
    prompts = [f"{doc}\nQuestion {q}?" for q in range(2) for doc in documents]  # question-major
    order = grouped_order(_paths(prompts))
    assert order == [0, 3, 1, 4, 2, 5]  # each document's questions together, in input order within it


def test_groups_nest_a_shared_system_prompt_then_each_document() -> None:
    system = "You answer questions about documents. " * 10  # over the first 256 characters
    documents = [f"Document {d}: " + "text " * 300 for d in range(2)]
    prompts = [f"{system}{doc}Q{q}" for q in range(2) for doc in documents] + ["A different task entirely."]
    assert grouped_order(_paths(prompts)) == [0, 2, 1, 3, 4]


def test_a_file_already_grouped_or_without_shared_prefixes_keeps_its_order() -> None:
    grouped = [f"Document {d}: " + "words " * 300 + f"Q{q}" for d in range(3) for q in range(2)]
    assert grouped_order(_paths(grouped)) is None
    assert grouped_order(_paths([f"line {i}" for i in range(10)])) is None
    assert grouped_order([(), (), ()]) is None  # lines without prompts (they fail on their own)


def test_token_prompts_group_by_their_ids_and_the_order_is_stored_as_uint32() -> None:
    first, second = list(range(100)), list(range(1000, 1100))
    order = grouped_order([prefix_path(p) for p in ([*first, 1], [*second, 1], [*first, 2])])
    assert order == [0, 2, 1]
    assert order_bytes([0, 2, 1]) == b"\x00\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00"


def test_prefixes_repeated_within_the_distance_keep_the_input_order() -> None:
    documents = [f"Document {d}: " + "words " * 300 for d in range(3)]
    prompts = [f"{doc}\nQuestion {q}?" for q in range(2) for doc in documents]  # each document 3 lines apart
    assert grouped_order(_paths(prompts), distance=3) is None  # near enough for the prefix cache
    assert grouped_order(_paths(prompts), distance=2) == [0, 3, 1, 4, 2, 5]


def test_the_run_input_holds_the_lines_byte_for_byte_in_run_order_and_the_order(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    documents = [f"Document {d}: " + "words " * 300 for d in range(3)]
    lines = [
        json.dumps({"custom_id": f"d{d}-q{q}", "prompt": f"{documents[d]}Q{q}?"}).encode()
        for q in range(2)
        for d in range(3)
    ]
    store.put_bytes("input.jsonl", b"\n".join(lines) + b"\n")
    run = write_run_input(store, "batch_x", "input.jsonl", "/v1/completions", len(lines), distance=2)
    assert run is not None
    order = [0, 3, 1, 4, 2, 5]
    assert list(read_order(store, run.order_key)) == order
    assert list(read_lines(store, run.key)) == [lines[i] for i in order]
    assert list(lines_from(store, run.key, run.line_offsets, 3)) == [lines[i] for i in order[3:]]
    assert write_run_input(store, "batch_y", "input.jsonl", "/v1/completions", len(lines), distance=3) is None
