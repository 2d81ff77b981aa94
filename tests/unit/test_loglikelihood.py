"""Loglikelihood lines (the `prompt_logprobs` engine call, added as one module): the registry
finds the kind, the upload check takes its lines, planning joins context and continuation and
refuses what the engine cannot score, and a strict window of them runs in one engine call on
the fake engine, the continuation's tokens summed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.jobs.endpoints import ENDPOINTS, endpoint_for
from app.jobs.endpoints.base import JobDefaults, ModelLimits, PlanContext, UnsupportedRequest
from app.jobs.endpoints.loglikelihood import PROMPT_LOGPROBS, ContinuationPlan, Likelihood
from app.jobs.lines import parse_line
from app.jobs.planning import plan_request
from app.jobs.upload_check import FileCheck, endpoint_mismatch
from tests.fakes import FakeEngine
from worker.strict import StrictBatches
from worker.windows import PreparedWindow

LOGLIKELIHOOD = "/v1/loglikelihood"
DEFAULTS = JobDefaults(max_tokens=16)
LIMITS = ModelLimits(max_model_len=8, vocab_size=100)


class WordTokenizer:
    """One token per word (its length + 10), a start token (1) before a prompt's words."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] * add_special_tokens + [len(word) + 10 for word in text.split()]


def line(custom_id: str, **body: Any) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": LOGLIKELIHOOD, "body": body}).encode()


def plan(raw: bytes) -> Any:
    return plan_request(raw, 0, LOGLIKELIHOOD, PlanContext(DEFAULTS, LIMITS, WordTokenizer()))


def test_the_registry_finds_the_kind_in_its_module_and_lists_it_last() -> None:
    kind = endpoint_for(LOGLIKELIHOOD)
    assert list(ENDPOINTS)[-1] == LOGLIKELIHOOD
    assert (kind.call, kind.worker_kind, kind.generates) == (PROMPT_LOGPROBS, "generate", False)


def test_the_upload_check_takes_openai_and_plain_lines_and_names_a_missing_continuation() -> None:
    check = FileCheck(max_errors=10)
    check.check(line("a", context="The sky is", continuation=" blue"))
    check.check(json.dumps({"custom_id": "b", "context": "One plus one is", "continuation": " two"}).encode())
    check.check(line("c", context="no continuation"))
    summary = check.summary()
    assert [(error["line"], error["param"]) for error in summary.errors] == [(3, "body.continuation")]
    assert summary.first_line_of["plain:continuation"] == 2
    assert endpoint_mismatch(summary, LOGLIKELIHOOD) is None
    assert parse_line(b'{"custom_id": "b", "continuation": "x"}', 0, LOGLIKELIHOOD).plain


def test_planning_joins_context_and_continuation_and_scores_the_continuation_alone() -> None:
    planned = plan(line("a", context="the big dog", continuation="ran far"))
    assert isinstance(planned, ContinuationPlan)
    assert planned.prompt == [1, 13, 13, 13, 13, 13] and planned.continuation_tokens == 2
    assert endpoint_for(LOGLIKELIHOOD).token_counts(planned) == (6, 0)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"context": "a b c d e f g", "continuation": "h i"}, "context", "context_length_exceeded"),
        # 8 tokens fill the context: the engine reads them as a prompt, which must leave one free
        ({"context": "a b c d e f", "continuation": "g"}, "context", "context_length_exceeded"),
        ({"context": "a", "continuation": "b", "logprobs": 5}, "logprobs", "invalid_request"),
        ({"context": "a", "continuation": "   "}, "continuation", "invalid_request"),  # no token
    ],
)
def test_planning_refuses_what_the_engine_cannot_score_naming_the_field(
    body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        plan(line("x", **body))
    assert (caught.value.param, caught.value.code) == (param, code)


def test_a_strict_window_runs_in_one_engine_call_and_sums_the_continuations_tokens() -> None:
    engine = FakeEngine()
    window = PreparedWindow(seq=0, first_line=0, next_line=3, call=PROMPT_LOGPROBS)
    bodies = [
        {"context": "ab", "continuation": "cd"},  # fake tokens are bytes: c=99, d=100
        {"context": "REFUSED", "continuation": "x"},
        {"context": "a", "continuation": "2"},  # "2" is 50: the most likely token
    ]
    for index, body in enumerate(bodies):
        request = parse_line(line(f"l{index}", **body), index, LOGLIKELIHOOD)
        window.add(request.kind.plan(request, PlanContext(DEFAULTS, engine.limits, engine.tokenizer)))
    generated = StrictBatches(engine).generate(window, batch_size=8)
    assert engine.calls[0] == 3  # one call for the window, then split to find the refused line
    assert [request.custom_id for request in window.runnable] == ["l0", "l2"] and list(window.errors) == [1]
    assert generated.generations == [
        Likelihood(prompt_tokens=4, continuation_tokens=2, logprob=-0.4 + 0.0, is_greedy=False),
        Likelihood(prompt_tokens=2, continuation_tokens=1, logprob=0.0, is_greedy=True),
    ]
    answer = json.loads(window.runnable[0].answer(generated.generations[0], "demo-llama"))["response"]["body"]
    assert answer["object"] == "loglikelihood" and answer["logprob"] == pytest.approx(-0.4)
    assert (answer["is_greedy"], answer["continuation_tokens"], answer["usage"]["prompt_tokens"]) == (False, 2, 4)


def test_a_static_batch_runs_in_engine_calls_of_at_most_tokens_per_call_prompt_tokens() -> None:
    engine = FakeEngine()
    request = parse_line(line("x", context="a", continuation="b"), 0, LOGLIKELIHOOD)
    sizes = [3000, 2000, 2000, 5000, 96]  # the 5,000-token line runs alone
    plans = [ContinuationPlan(request, [1] * size, 1) for size in sizes]
    results = PROMPT_LOGPROBS.run(engine, plans)
    assert engine.calls == [1, 2, 1, 1] and len(results) == len(plans)
    assert [result.prompt_tokens for result in results] == sizes


class BareTokenizer(WordTokenizer):
    """A word tokenizer that adds no start token, and has no start or end-of-text id."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return super().encode(text, add_special_tokens=False)


class EndOfTextTokenizer(BareTokenizer):
    """One with an end-of-text id and no start id."""

    bos_token_id: int | None = None
    eos_token_id = 2


def test_an_empty_context_text_stands_as_the_models_start_or_end_of_text_token() -> None:
    def planned(tokenizer: Any, **body: Any) -> Any:
        return plan_request(line("a", **body), 0, LOGLIKELIHOOD, PlanContext(DEFAULTS, LIMITS, tokenizer))

    with_end_of_text = planned(EndOfTextTokenizer(), continuation="big dog")
    assert with_end_of_text.prompt == [2, 13, 13] and with_end_of_text.continuation_tokens == 2
    for tokenizer, body in [(EndOfTextTokenizer(), {"context": []}), (BareTokenizer(), {"context": ""})]:
        with pytest.raises(UnsupportedRequest) as caught:  # ids are taken as given; no token to stand for it
            planned(tokenizer, continuation="dog", **body)
        assert caught.value.param == "context"
