"""Score and rerank lines: the input format (vLLM's bodies, `queries`/`documents` aliases,
plain lines), the upload check, planning (pairs and tokens), the output shapes, and a strict
window of them on the fake engine (one `score` call, a refusal split out)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.jobs.endpoints import EMBEDDINGS, RERANK, SCORE
from app.jobs.endpoints.base import JobDefaults, ModelLimits, PlanContext, UnsupportedRequest
from app.jobs.endpoints.rerank import RerankBody
from app.jobs.endpoints.score import ScoreBody
from app.jobs.endpoints.score_call import SCORE_CALL, Scores, ScoringPlan
from app.jobs.lines import LineError, parse_line
from app.jobs.planning import plan_request
from app.jobs.upload_check import FileCheck, endpoint_mismatch
from tests.fakes import FakeEngine
from worker.strict import StrictBatches
from worker.windows import PreparedWindow

DEFAULTS = JobDefaults(max_tokens=16)
LIMITS = ModelLimits(max_model_len=6, vocab_size=100, embedding_size=4)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def openai_line(custom_id: str, url: str, **body: Any) -> bytes:
    return line({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


class WordTokenizer:
    """One token per word, between a start (1) and an end (2) token."""

    def encode(self, text: str) -> list[int]:
        return [1, *(len(word) + 10 for word in text.split()), 2]


def plan(raw: bytes, endpoint: str) -> Any:
    return plan_request(raw, 0, endpoint, PlanContext(DEFAULTS, LIMITS, WordTokenizer()))


@pytest.mark.parametrize(
    ("body", "pairs"),
    [
        ({"text_1": "q", "text_2": "a"}, [("q", "a")]),
        ({"text_1": "q", "text_2": ["a", "b"]}, [("q", "a"), ("q", "b")]),
        ({"text_1": ["q", "r"], "text_2": ["a", "b"]}, [("q", "a"), ("r", "b")]),
        ({"queries": ["q"], "documents": ["a", "b"]}, [("q", "a"), ("q", "b")]),  # vLLM's other names
        ({"queries": "q", "text_2": "a"}, [("q", "a")]),
    ],
)
def test_a_score_body_pairs_its_texts_1_to_1_1_to_n_or_n_to_n(body: dict[str, Any], pairs: list[Any]) -> None:
    for raw in (openai_line("s", SCORE, **body), openai_line("s", SCORE, model="demo-embed", **body)):
        planned = plan(raw, SCORE)
        assert isinstance(planned, ScoringPlan) and planned.pairs == pairs
        assert planned.prompt_tokens == 3 * 2 * len(pairs)  # each text: start, one word, end
    check = FileCheck(max_errors=10)
    check.check(openai_line("s", SCORE, **body))
    assert check.summary().errors == []


@pytest.mark.parametrize(
    ("raw", "endpoint", "param", "message"),
    [
        (openai_line("s", SCORE, text_1=["a", "b"], text_2=["c"]), SCORE, "body", "pair them 1 -> 1, 1 -> N or N -> N"),
        (openai_line("s", SCORE, text_1=[], text_2="c"), SCORE, "body.text_1", "a list of 1 to 2048 strings"),
        (openai_line("s", SCORE, text_1="a", text_2=[1]), SCORE, "body.text_2", "a list of 1 to 2048 strings"),
        (openai_line("s", SCORE, text_1="a", queries="b", text_2="c"), SCORE, "body", "give text_1 or queries"),
        (openai_line("s", SCORE, text_2="c"), SCORE, "body.text_1", "missing body.text_1"),
        (openai_line("r", RERANK, query="q"), RERANK, "body.documents", "Field required"),
        (openai_line("r", RERANK, query="q", documents="a"), RERANK, "body.documents", "a list of 1 to 2048"),
        (openai_line("r", RERANK, query="q", documents=["a"], top_n=-1), RERANK, "body.top_n", "greater than"),
        (openai_line("r", RERANK, documents=["a"]), RERANK, "body.query", "missing body.query"),
        (line({"custom_id": "r", "query": "q", "documents": ["a"]}), SCORE, "query", "query given, but"),
        (line({"custom_id": "s", "text_1": "q", "text_2": "a"}), EMBEDDINGS, "text_1", "text_1 given, but"),
    ],
)
def test_a_malformed_scoring_line_is_a_line_error_naming_its_field(
    raw: bytes, endpoint: str, param: str, message: str
) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(raw, 0, endpoint)
    assert caught.value.param == param and message in caught.value.message


def test_plain_scoring_lines_pass_the_upload_check_as_their_kind_and_only_run_on_it() -> None:
    check = FileCheck(max_errors=10)
    check.check(line({"custom_id": "r", "query": "q", "documents": ["a", "b"], "top_n": 1}))
    check.check(line({"custom_id": "s", "text_1": "q", "text_2": ["a"]}))
    summary = check.summary()
    assert summary.errors == [] and summary.first_line_of == {"plain:query": 1, "plain:text_1": 2}
    assert endpoint_mismatch(summary, SCORE) is not None and endpoint_mismatch(summary, RERANK) is not None
    only_rerank = FileCheck(max_errors=10)
    only_rerank.check(line({"custom_id": "r", "query": "q", "documents": ["a"]}))
    assert endpoint_mismatch(only_rerank.summary(), RERANK) is None
    assert parse_line(line({"custom_id": "r", "query": "q", "documents": ["a"]}), 0, RERANK).plain


def test_planning_refuses_unknown_fields_and_texts_longer_than_the_context() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("r", RERANK, query="q", documents=["a"], truncate_prompt_tokens=3), RERANK)
    assert caught.value.param == "truncate_prompt_tokens"
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("r", RERANK, query="q", documents=["a", "a b c d e"]), RERANK)
    assert (caught.value.param, caught.value.code) == ("documents", "context_length_exceeded")
    assert "documents 1 has 7 tokens" in caught.value.message
    with pytest.raises(UnsupportedRequest) as caught:
        plan(openai_line("s", SCORE, text_1="a b c d e", text_2="x"), SCORE)
    assert caught.value.param == "text_1"
    rerank = plan(openai_line("r", RERANK, query="q", documents=["a", "b c"], user="u"), RERANK)
    assert rerank.pairs == [("q", "a"), ("q", "b c")] and rerank.prompt_tokens == 3 + 3 + 3 + 4
    assert rerank.request.kind.token_counts(rerank) == (13, 0)


def answer(raw: bytes, endpoint: str, scores: list[float], tokens: int = 7) -> dict[str, Any]:
    request = parse_line(raw, 0, endpoint)
    out = json.loads(request.answer(Scores(prompt_tokens=tokens, scores=scores), "demo-embed"))
    assert out["custom_id"] == request.custom_id and out["response"]["status_code"] == 200
    body: dict[str, Any] = out["response"]["body"]
    return body


def test_a_score_answer_is_vllms_score_response() -> None:
    body = answer(openai_line("s", SCORE, text_1="q", text_2=["a", "b"]), SCORE, [0.25, 0.75])
    assert body.pop("id").startswith("score-") and isinstance(body.pop("created"), int)
    assert body == {
        "object": "list",
        "model": "demo-embed",
        "data": [{"index": 0, "object": "score", "score": 0.25}, {"index": 1, "object": "score", "score": 0.75}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_a_rerank_answer_ranks_best_first_cut_to_top_n_with_or_without_documents() -> None:
    raw = openai_line("r", RERANK, query="q", documents=["a", "b", "c"])
    body = answer(raw, RERANK, [0.1, 0.9, 0.5])
    assert body.pop("id").startswith("rerank-")
    assert body == {
        "model": "demo-embed",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
        "results": [
            {"index": 1, "document": {"text": "b"}, "relevance_score": 0.9},
            {"index": 2, "document": {"text": "c"}, "relevance_score": 0.5},
            {"index": 0, "document": {"text": "a"}, "relevance_score": 0.1},
        ],
    }
    cut = answer(
        openai_line("r", RERANK, query="q", documents=["a", "b", "c"], top_n=2, return_documents=False),
        RERANK,
        [0.1, 0.9, 0.5],
    )
    assert cut["results"] == [{"index": 1, "relevance_score": 0.9}, {"index": 2, "relevance_score": 0.5}]
    every = answer(openai_line("r", RERANK, query="q", documents=["a", "b"], top_n=0), RERANK, [0.5, 0.5])
    assert [result["index"] for result in every["results"]] == [0, 1]  # ties keep document order


def test_a_strict_window_of_scoring_lines_runs_in_one_score_call_and_splits_out_a_refusal() -> None:
    engine = FakeEngine(kind="embed")
    raws = [
        openai_line("a", RERANK, query="abc", documents=["abc", "xyz"]),
        openai_line("b", RERANK, query="REFUSED", documents=["x"]),
        openai_line("c", RERANK, query="ab", documents=["b"]),
    ]
    window = PreparedWindow(seq=0, first_line=0, next_line=3, call=SCORE_CALL)
    for index, raw in enumerate(raws):
        request = parse_line(raw, index, RERANK)
        window.add(request.kind.plan(request, PlanContext(DEFAULTS, engine.limits, engine.tokenizer)))
    assert [plan.prompt_tokens for plan in window.plans] == [12, 8, 3]
    generated = StrictBatches(engine).generate(window, batch_size=8)
    assert engine.calls[0] == 3  # all three lines in one call, then split to find the refused one
    assert [request.custom_id for request in window.runnable] == ["a", "c"] and list(window.errors) == [1]
    assert generated.generations == [
        Scores(prompt_tokens=12, scores=[1.0, 0.0]),
        Scores(prompt_tokens=3, scores=[0.5]),
    ]
    assert isinstance(window.runnable[0].body, RerankBody) and not isinstance(window.runnable[0].body, ScoreBody)
