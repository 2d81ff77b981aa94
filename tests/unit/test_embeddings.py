"""Embeddings lines: the input format, the upload check, planning and the output shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from app.core.settings import Settings
from app.jobs.endpoints import COMPLETIONS, EMBEDDINGS
from app.jobs.endpoints.base import JobDefaults, ModelLimits, PlanContext, UnsupportedRequest
from app.jobs.endpoints.embed_call import Embeddings, Pooling
from app.jobs.endpoints.embeddings import EmbeddingBody, base64_vector
from app.jobs.lines import LineError, parse_line
from app.jobs.planning import plan_request
from app.jobs.upload_check import FileCheck, endpoint_mismatch

DEFAULTS = JobDefaults(max_tokens=16)
LIMITS = ModelLimits(max_model_len=8, vocab_size=100, embedding_size=4)
MATRYOSHKA = ModelLimits(
    max_model_len=8, vocab_size=100, embedding_size=4, matryoshka=True, matryoshka_dimensions=(2, 4)
)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def openai_line(custom_id: str, **body: Any) -> bytes:
    return line({"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": body})


class WordTokenizer:
    """One token per word (its length), between a start (1) and an end (2) token."""

    def encode(self, text: str) -> list[int]:
        return [1, *(len(word) + 10 for word in text.split()), 2]


def plan(raw: bytes, limits: ModelLimits = LIMITS, defaults: JobDefaults = DEFAULTS) -> Any:
    return plan_request(raw, 0, EMBEDDINGS, PlanContext(defaults, limits, WordTokenizer()))


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("one text", ["one text"]),
        (["a", "b c"], ["a", "b c"]),
        ([5, 6, 7], [[5, 6, 7]]),
        ([[5], [6, 7]], [[5], [6, 7]]),
    ],
)
def test_each_input_shape_gives_one_input_per_item(value: object, inputs: list[object]) -> None:
    for raw in (openai_line("e", input=value), line({"custom_id": "e", "input": value})):
        request = parse_line(raw, 0, EMBEDDINGS)
        assert request.endpoint == EMBEDDINGS and isinstance(request.body, EmbeddingBody)
        assert request.body.inputs() == inputs and request.body.encoding_format == "float"


def test_a_plain_input_line_takes_the_embeddings_endpoint_at_upload() -> None:
    request = parse_line(line({"custom_id": "e", "input": "x", "dimensions": 2}), 0, None)
    assert request.plain and request.endpoint == EMBEDDINGS
    assert isinstance(request.body, EmbeddingBody) and request.body.dimensions == 2


@pytest.mark.parametrize(
    ("raw", "endpoint", "param", "message"),
    [
        (openai_line("e", input=[]), None, "body.input", "input must be a string, a list of strings"),
        (openai_line("e", input=["a", 1]), None, "body.input", "input must be a string"),
        (openai_line("e", input=[True]), None, "body.input", "input must be a string"),
        (openai_line("e", input=[[1], "a"]), None, "body.input", "input must be a string"),
        (openai_line("e", input="x", encoding_format="hex"), None, "body.encoding_format", "'float' or 'base64'"),
        (openai_line("e", input="x", dimensions=0), None, "body.dimensions", "greater than or equal to 1"),
        (openai_line("e", prompt="x"), None, "body.input", "missing body.input"),
        (line({"custom_id": "e", "input": "x"}), COMPLETIONS, "input", "input given, but the batch's endpoint"),
        (line({"custom_id": "e", "prompt": "x"}), EMBEDDINGS, "prompt", "prompt given, but the batch's endpoint"),
        (openai_line("e", input="x"), COMPLETIONS, "url", "does not match the batch's endpoint"),
    ],
)
def test_a_broken_embeddings_line_names_its_field(raw: bytes, endpoint: str | None, param: str, message: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(raw, 0, endpoint)
    assert caught.value.param == param and message in caught.value.message


def test_the_upload_check_accepts_embeddings_lines_and_an_embeddings_batch_refuses_other_lines() -> None:
    check = FileCheck(max_errors=10)
    check.check_lines([openai_line("a", input="x"), line({"custom_id": "b", "input": [[1, 2], [3]]})])
    summary = check.summary()
    assert summary.errors == [] and summary.first_line_of == {EMBEDDINGS: 1, "plain:input": 2}
    assert endpoint_mismatch(summary, EMBEDDINGS) is None
    mismatch = endpoint_mismatch(summary, COMPLETIONS)
    assert mismatch is not None and (mismatch.line, mismatch.param) == (1, "url")

    prompts = FileCheck(max_errors=10)
    prompts.check_lines([line({"custom_id": "a", "prompt": "x"}), line({"custom_id": "b", "input": "y"})])
    refused = endpoint_mismatch(prompts.summary(), EMBEDDINGS)
    assert refused is not None and (refused.line, refused.param) == (1, "prompt")
    assert "prompt given, but the batch's endpoint is /v1/embeddings" in refused.message


def test_planning_tokenizes_every_input_and_sets_no_pooling_by_default() -> None:
    planned = plan(openai_line("e", input=["one", "two words"]))
    assert planned.inputs == [[1, 13, 2], [1, 13, 15, 2]] and planned.pooling == Pooling()
    assert plan(openai_line("e", input=[[5, 6], [7]])).inputs == [[5, 6], [7]]


def test_dimensions_on_a_model_that_is_not_matryoshka_fail_the_line_naming_the_field() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("e", input="x", dimensions=2))
    assert caught.value.param == "dimensions" and "not a Matryoshka model" in caught.value.message


def test_dimensions_on_a_matryoshka_model_reach_the_pooling_params_when_the_model_lists_them() -> None:
    assert plan(openai_line("e", input="x", dimensions=2), MATRYOSHKA).pooling == Pooling(dimensions=2)
    for dimensions, reason in ((3, "not one of this model's: 2, 4"), (8, "out of range")):
        with pytest.raises(UnsupportedRequest) as caught:
            plan(openai_line("e", input="x", dimensions=dimensions), MATRYOSHKA)
        assert caught.value.param == "dimensions" and reason in caught.value.message


def test_each_input_is_checked_against_the_context_and_the_vocabulary() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("e", input=["short", "a b c d e f g"]))
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "input"
    assert "input 1 has 9 tokens" in caught.value.message
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("e", input=[3, 100]))
    assert caught.value.code == "invalid_token_id"
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("e", input=[[1], []]))
    assert "Input 1 is empty" in caught.value.message


def test_truncate_prompts_keeps_the_start_of_a_long_input() -> None:
    planned = plan(openai_line("e", input=list(range(20))), defaults=JobDefaults(max_tokens=16, truncate_prompts=True))
    assert planned.inputs == [list(range(8))]


def test_an_unknown_field_fails_the_line_naming_it() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("e", input="x", truncate="END"))
    assert caught.value.param == "truncate"
    assert plan(openai_line("e", input="x", user="u1", model="any")).pooling == Pooling()


def test_the_output_line_has_openais_embedding_shape_with_one_vector_per_input() -> None:
    vectors = [[0.25, -1.5, 3.0], [1e-7, 2.0, -0.1]]
    request = parse_line(openai_line("e", input=["a", "b"]), 0, EMBEDDINGS)
    out = json.loads(request.answer(Embeddings(prompt_tokens=7, vectors=vectors), "demo-embed"))
    assert out["custom_id"] == "e" and out["error"] is None and out["response"]["status_code"] == 200
    assert out["response"]["body"] == {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": "demo-embed",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_base64_is_little_endian_float32() -> None:
    vectors = [[0.1, -2.5, 3.25e-5, 7.0]]
    request = parse_line(openai_line("e", input="a", encoding_format="base64"), 0, EMBEDDINGS)
    out = json.loads(request.answer(Embeddings(prompt_tokens=3, vectors=vectors), "demo-embed"))
    [item] = out["response"]["body"]["data"]
    assert isinstance(item["embedding"], str) and item["embedding"] == base64_vector(vectors[0])
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert decoded.tolist() == np.asarray(vectors[0], dtype=np.float32).tolist()


def test_the_two_kinds_of_worker_may_not_serve_one_model_name() -> None:
    with pytest.raises(ValueError, match="both served as"):
        Settings(served_model_name="same", embedding_served_model_name="same")
    assert Settings(model="/models/llama", embedding_model="/models/bert").embedding_model_name == "/models/bert"
