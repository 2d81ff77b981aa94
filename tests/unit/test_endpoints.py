"""The endpoint registry: each kind's body model round-trips its documented example, plain
lines map as documented, and no module outside `app/jobs/endpoints/` compares endpoint URLs
or body classes, or dispatches on an engine call, its plan type or its result type (read from
the source with `ast`)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from app.data.json_values import UploadCheck
from app.jobs.endpoints import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    ENDPOINTS,
    PLAIN_FIELDS,
    RERANK,
    RESPONSES,
    SCORE,
    endpoint_for,
    plain_runs_on,
    worker_kinds,
)
from app.jobs.lines import LineError, parse_line
from app.jobs.upload_check import FileCheck

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "app" / "jobs" / "endpoints"
CHECKED = ("app", "worker")
LOGLIKELIHOOD = "/v1/loglikelihood"
ENDPOINT_NAMES = {"COMPLETIONS", "CHAT_COMPLETIONS", "EMBEDDINGS", "RESPONSES", "SCORE", "RERANK", "ENDPOINTS"}
BODY_CLASSES = {endpoint.body_model.__name__ for endpoint in ENDPOINTS.values()}
CALL_TYPES = {t.__name__ for kind in ENDPOINTS.values() for t in (kind.call.plan_type, kind.call.result_type)}
CALL_NAMES = {kind.call.name for kind in ENDPOINTS.values()}


# The registry


@pytest.mark.parametrize("url", list(ENDPOINTS))
def test_every_body_model_round_trips_its_documented_example(url: str) -> None:
    kind = endpoint_for(url)
    body = kind.body_model.model_validate(kind.example)
    assert body.model_dump(exclude_unset=True) == kind.example
    assert kind.body_model.model_validate(body.model_dump(exclude_unset=True)) == body
    assert kind.required_field in kind.example and kind.plain_fields[0] == kind.required_field


@pytest.mark.parametrize("url", list(ENDPOINTS))
def test_an_openai_line_of_the_example_parses_and_passes_the_upload_check_as_its_kind(url: str) -> None:
    raw = json.dumps({"custom_id": "a", "method": "POST", "url": url, "body": endpoint_for(url).example}).encode()
    request = parse_line(raw, 0, url)
    assert (request.endpoint, request.kind, request.plain) == (url, endpoint_for(url), False)
    assert request.body == endpoint_for(url).body_model.model_validate(endpoint_for(url).example)
    check = FileCheck(max_errors=10)
    check.check(raw)
    assert check.summary() == UploadCheck(errors=[], error_count=0, first_line_of={url: 1})


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("line", "job_endpoint", "endpoint", "body"),
    [
        # At upload (no batch yet): the kind whose own field the line gives.
        ({"prompt": "hi"}, None, COMPLETIONS, {"prompt": "hi"}),
        ({"messages": MESSAGES}, None, CHAT_COMPLETIONS, {"messages": MESSAGES}),
        ({"input": "hi"}, None, EMBEDDINGS, {"input": "hi"}),  # an embeddings body first
        (
            {"input": MESSAGES},
            None,
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
        ),
        # In a batch: the batch's kind, a plain prompt being a chat's one message or a responses input.
        (
            {"prompt": "hi", "max_tokens": 3},
            CHAT_COMPLETIONS,
            CHAT_COMPLETIONS,
            {"messages": MESSAGES, "max_tokens": 3},
        ),
        (
            {"prompt": "hi"},
            RESPONSES,
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
        ),
        (
            {"input": "hi"},
            RESPONSES,
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
        ),
        ({"input": [1, 2]}, EMBEDDINGS, EMBEDDINGS, {"input": [1, 2]}),
        # Scoring: the query of a rerank, the text_1 of a score, at upload or in their batch.
        ({"query": "q", "documents": ["a", "b"]}, None, RERANK, {"query": "q", "documents": ["a", "b"]}),
        (
            {"query": "q", "documents": ["a"], "top_n": 1},
            RERANK,
            RERANK,
            {"query": "q", "documents": ["a"], "top_n": 1},
        ),
        ({"text_1": "q", "text_2": ["a", "b"]}, None, SCORE, {"text_1": "q", "text_2": ["a", "b"]}),
        ({"text_1": ["q"], "text_2": ["a"]}, SCORE, SCORE, {"text_1": ["q"], "text_2": ["a"]}),
    ],
)
def test_a_plain_line_maps_as_documented(
    line: dict[str, Any], job_endpoint: str | None, endpoint: str, body: dict[str, Any]
) -> None:
    request = parse_line(json.dumps({"custom_id": "a", **line}).encode(), 0, job_endpoint)
    assert (request.endpoint, request.plain) == (endpoint, True)
    assert request.body.model_dump(exclude_unset=True) == body


@pytest.mark.parametrize(
    ("line", "job_endpoint", "given"),
    [
        ({"messages": MESSAGES}, COMPLETIONS, "messages"),
        ({"prompt": "hi"}, EMBEDDINGS, "prompt"),
        ({"input": "hi"}, CHAT_COMPLETIONS, "input"),
        ({"messages": MESSAGES, "prompt": "hi"}, RESPONSES, "messages"),  # messages tell the most
        ({"query": "q", "documents": ["a"]}, SCORE, "query"),
        ({"text_1": "q", "text_2": "a"}, RERANK, "text_1"),
        ({"input": "hi"}, RERANK, "input"),
    ],
)
def test_a_plain_line_the_batch_cannot_take_is_refused_naming_its_field(
    line: dict[str, Any], job_endpoint: str, given: str
) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(json.dumps({"custom_id": "a", **line}).encode(), 0, job_endpoint)
    assert caught.value.param == given
    assert caught.value.message == f"{given} given, but the batch's endpoint is {job_endpoint}"


def test_the_registry_says_where_plain_lines_run_and_which_worker_serves_each_kind() -> None:
    assert plain_runs_on("prompt") == {COMPLETIONS, CHAT_COMPLETIONS, RESPONSES}
    assert plain_runs_on("messages") == {CHAT_COMPLETIONS}
    assert plain_runs_on("input") == {EMBEDDINGS, RESPONSES}
    assert plain_runs_on("query") == {RERANK} and plain_runs_on("text_1") == {SCORE}
    assert set(PLAIN_FIELDS) == {kind.required_field for kind in ENDPOINTS.values()}
    assert worker_kinds() == {
        "generate": [COMPLETIONS, CHAT_COMPLETIONS, RESPONSES, LOGLIKELIHOOD],
        "embed": [EMBEDDINGS, SCORE, RERANK],
    }
    assert [kind.generates for kind in ENDPOINTS.values()] == [True, True, False, True, False, False, False]
    assert [kind.call.name for kind in ENDPOINTS.values()] == [
        "generate",
        "generate",
        "embed",
        "generate",
        "score",
        "score",
        "prompt_logprobs",
    ]


# Nobody else compares endpoints


def _names_an_endpoint(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in ENDPOINTS
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) in ENDPOINT_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_an_endpoint(item) for item in node.elts)
    return False


def _names_one_of(node: ast.AST, names: set[str]) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id in names) or (isinstance(n, ast.Attribute) and n.attr in names)
        for n in ast.walk(node)
    )


def _compares_a_call(node: ast.Compare) -> bool:
    """A comparison of an engine call (`x.call`, `call`, `engine_call()`) with a call's name."""
    sides = [node.left, *node.comparators]
    named = any(isinstance(side, ast.Constant) and side.value in CALL_NAMES for side in sides)
    return named and any(_names_one_of(side, {"call", "engine_call"}) for side in sides)


def endpoint_dispatch(source: str, path: str) -> list[str]:
    """Comparisons (==, !=, in, not in) and subscripts against an endpoint URL or constant,
    dict keys that are endpoint URLs, and isinstance checks against body classes."""
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Compare) and any(_names_an_endpoint(n) for n in [node.left, *node.comparators]):
            found.append(f"{path}:{node.lineno}: compares an endpoint")
        elif isinstance(node, ast.Subscript) and _names_an_endpoint(node.slice):
            found.append(f"{path}:{node.lineno}: looks an endpoint up")
        elif isinstance(node, ast.Dict) and any(key is not None and _names_an_endpoint(key) for key in node.keys):
            found.append(f"{path}:{node.lineno}: keys a dict by endpoint")
        elif isinstance(node, ast.Compare) and _compares_a_call(node):
            found.append(f"{path}:{node.lineno}: compares an engine call")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and len(node.args) == 2
        ):
            if _names_one_of(node.args[1], BODY_CLASSES):
                found.append(f"{path}:{node.lineno}: isinstance against a body class")
            elif _names_one_of(node.args[1], CALL_TYPES):
                found.append(f"{path}:{node.lineno}: isinstance against an engine call's plan or result type")
    return found


def test_the_scan_catches_comparisons_lookups_keys_and_isinstance() -> None:
    source = (
        'if endpoint == "/v1/embeddings": pass\n'
        "if url in (COMPLETIONS, x): pass\n"
        "y = {RESPONSES: 1}\n"
        'z = table["/v1/chat/completions"]\n'
        "ok = isinstance(body, ChatBody | ResponsesBody)\n"
        'fine = url == "/v1/files" or isinstance(x, int) or kind.generates\n'
        "if isinstance(plan, GenerationPlan): pass\n"
        "ok = [g for g in results if isinstance(g, Embeddings | Scores)]\n"
        'if window.call == "embed": pass\n'
        'if endpoint_for(url).engine_call() != "generate": pass\n'
        'also_fine = engine.kind == "embed" or call.overlaps\n'
    )
    found = [line.split(": ", 1)[0] for line in endpoint_dispatch(source, "x.py")]
    assert sorted(found, key=lambda where: int(where.split(":")[1])) == [
        "x.py:1",
        "x.py:2",
        "x.py:3",
        "x.py:4",
        "x.py:5",
        "x.py:7",
        "x.py:8",
        "x.py:9",
        "x.py:10",
    ]


def test_no_module_outside_the_registry_compares_an_endpoint() -> None:
    found = []
    for path in sorted(p for top in CHECKED for p in (ROOT / top).rglob("*.py")):
        if REGISTRY in path.parents:
            continue
        found += endpoint_dispatch(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "dispatch outside app/jobs/endpoints/ (ask the kind or its call):\n" + "\n".join(found)
