"""`/v1/loglikelihood`: how likely the model finds a continuation after a context, the request
evaluation harnesses make for multiple-choice and perplexity tasks (lm-evaluation-harness's
`loglikelihood`). Nothing is generated: the generation engine reads context + continuation once
and reports each continuation token's log probability (vLLM's `prompt_logprobs`).

This module is a whole engine call (its plan, result and `EngineCall`) and the endpoint that
uses it; with `worker.engine.VllmEngine.prompt_logprobs` it is everything the call needs.

Body: `context` (default "") and `continuation` (at least one token), each a string or token ids
(a harness that tokenized them itself). The answer
gives `logprob` (the continuation's summed log probability), `is_greedy` (every continuation
token is the model's most likely one) and the token counts. Plain line:
`{"custom_id", "context", "continuation"}`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.endpoints.base import (
    Endpoint,
    PlanContext,
    Tokenizer,
    UnsupportedRequest,
    check_vocabulary,
    refuse_unknown,
)
from app.jobs.endpoints.call import AnyCall, EngineCall
from app.jobs.output_lines import answer_line

if TYPE_CHECKING:
    from app.jobs.lines import Request


@dataclass(frozen=True)
class ContinuationPlan:
    """Context and continuation as one prompt of token ids; the last `continuation_tokens` are scored."""

    request: Request
    prompt: list[int]
    continuation_tokens: int


@dataclass(frozen=True)
class Likelihood:
    """What the engine made of one line: the continuation's summed log probability."""

    prompt_tokens: int
    continuation_tokens: int
    logprob: float
    is_greedy: bool  # every continuation token was the model's most likely next token
    completion_tokens: int = 0  # nothing is generated
    cached_tokens: int = 0


class PromptScorer(Protocol):
    """The engine method the call runs on (`worker.engine.VllmEngine`)."""

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[tuple[float, bool]]]: ...


TOKENS_PER_CALL = 4096  # prompt tokens per engine call (see PromptLogprobsCall.run)


class PromptLogprobsCall(EngineCall[ContinuationPlan, Likelihood, PromptScorer]):
    name: ClassVar[str] = "prompt_logprobs"
    plan_type: ClassVar[type] = ContinuationPlan
    result_type: ClassVar[type] = Likelihood

    def run(self, engine: PromptScorer, plans: list[ContinuationPlan]) -> list[Likelihood]:
        """The static batch in engine calls of at most TOKENS_PER_CALL prompt tokens (a longer
        line alone): vLLM holds the whole vocabulary's log probabilities for every prompt
        token of a step at once, memory its start-up profile does not count."""
        scored: list[list[tuple[float, bool]]] = []
        start = 0
        while start < len(plans):
            end, size = start + 1, len(plans[start].prompt)
            while end < len(plans) and size + len(plans[end].prompt) <= TOKENS_PER_CALL:
                size += len(plans[end].prompt)
                end += 1
            scored += engine.prompt_logprobs([plan.prompt for plan in plans[start:end]])
            start = end
        results = []
        for plan, tokens in zip(plans, scored, strict=True):
            continuation = tokens[-plan.continuation_tokens :]
            results.append(
                Likelihood(
                    prompt_tokens=len(plan.prompt),
                    continuation_tokens=plan.continuation_tokens,
                    logprob=sum(logprob for logprob, _ in continuation),
                    is_greedy=all(greedy for _, greedy in continuation),
                )
            )
        return results

    def length(self, plan: ContinuationPlan) -> tuple[int, int]:
        return 0, len(plan.prompt)

    def token_counts(self, plan: ContinuationPlan) -> tuple[int, int]:
        return len(plan.prompt), 0


PROMPT_LOGPROBS = PromptLogprobsCall()


class LoglikelihoodBody(BaseModel):
    """A continuation to score after a context."""

    model_config = ConfigDict(extra="allow")  # unknown fields are refused per line, naming them

    model: str | None = None
    context: str | list[int] = ""
    continuation: str | list[int] = Field(min_length=1)
    user: str | None = None


class LikelihoodUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class LoglikelihoodAnswer(BaseModel):
    id: str
    object: Literal["loglikelihood"] = "loglikelihood"
    created: int
    model: str
    logprob: float
    is_greedy: bool
    continuation_tokens: int
    usage: LikelihoodUsage


class LoglikelihoodEndpoint(Endpoint[LoglikelihoodBody]):
    url: ClassVar[str] = "/v1/loglikelihood"
    listing_order: ClassVar[int] = 70
    body_model = LoglikelihoodBody
    required_field: ClassVar[str] = "continuation"
    plain_fields: ClassVar[tuple[str, ...]] = ("continuation",)
    worker_kind: ClassVar = "generate"
    call: ClassVar[AnyCall] = PROMPT_LOGPROBS
    generates: ClassVar[bool] = False
    example: ClassVar[dict[str, Any]] = {
        "model": "demo-llama",
        "context": "Question: what is the capital of France?\nAnswer:",
        "continuation": " Paris",
    }

    def accepts_adapters(self) -> bool:
        return False  # the engine method scores with the base model: `model` names the job's

    def input_token_ids(self, tokenizer: Tokenizer, body: LoglikelihoodBody) -> list[list[int]]:
        """The context as a prompt (with the model's special tokens), the continuation without;
        token ids as given. A context text that gives no token is the model's start token (or,
        without one, its end-of-text token), as evaluation harnesses score a text on its own."""
        context, continuation = body.context, body.continuation
        context_ids = list(context) if isinstance(context, list) else list(tokenizer.encode(context))
        if not context_ids and isinstance(context, str):
            start = getattr(tokenizer, "bos_token_id", None)
            start = start if start is not None else getattr(tokenizer, "eos_token_id", None)
            context_ids = [start] if isinstance(start, int) else []
        return [
            context_ids,
            list(continuation)
            if isinstance(continuation, list)
            else list(tokenizer.encode(continuation, add_special_tokens=False)),
        ]

    def plan(self, request: Request, ctx: PlanContext) -> ContinuationPlan:
        body = self.body_of(request)
        refuse_unknown(body)
        context, continuation = self.input_token_ids(ctx.tokenizer, body)
        check_vocabulary(context, ctx.limits, "context")
        check_vocabulary(continuation, ctx.limits, "continuation")
        if not context:
            raise UnsupportedRequest(
                "The context has no tokens (and the model no start or end-of-text token to stand for it): "
                "the first token has no probability.",
                "context",
            )
        if not continuation:
            raise UnsupportedRequest("The continuation has no tokens.", "continuation")
        prompt = context + continuation
        limit = ctx.limits.max_model_len
        if len(prompt) >= limit:  # the engine reads it as a prompt, which must leave one token free
            raise UnsupportedRequest(
                f"This model's maximum context length is {limit} tokens, and a context and continuation must "
                f"leave one of them free. However, they have {len(prompt)} tokens. Please shorten them.",
                param="context",
                code="context_length_exceeded",
            )
        return ContinuationPlan(request=request, prompt=prompt, continuation_tokens=len(continuation))

    def output_line(self, custom_id: str, body: LoglikelihoodBody, result: Likelihood, model: str) -> bytes:
        answer = LoglikelihoodAnswer(
            id=f"loglikelihood-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            logprob=result.logprob,
            is_greedy=result.is_greedy,
            continuation_tokens=result.continuation_tokens,
            usage=LikelihoodUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )
        return answer_line(custom_id, answer)
