"""`/v1/completions`: a prompt (text or token ids) continued; answered with a `text_completion`.

Plain line: `{"custom_id", "prompt"}`, with any body field beside it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from app.jobs.endpoints.base import JobDefaults, Tokenizer, refuse_unknown
from app.jobs.endpoints.generate_call import Generation, Sampling, TokenLogprob
from app.jobs.endpoints.generation import GenerationEndpoint, SampledBody, body_sampling, usage
from app.jobs.output_lines import Usage, answer_line


class CompletionBody(SampledBody):
    prompt: str | list[int]
    # How many the engine returns at most is the model's (planning refuses more, per line).
    logprobs: int | None = Field(default=None, ge=0, description="top log probabilities per token")


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str


class TextCompletion(BaseModel):
    """A `text_completion` object, as OpenAI's API answers."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


def _completion_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    offsets, position = [], 0
    for t in tokens:
        offsets.append(position)
        position += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


class Completions(GenerationEndpoint[CompletionBody]):
    url: ClassVar[str] = "/v1/completions"
    listing_order: ClassVar[int] = 10
    body_model = CompletionBody
    required_field: ClassVar[str] = "prompt"
    plain_fields: ClassVar[tuple[str, ...]] = ("prompt",)
    example: ClassVar[dict[str, Any]] = {"model": "demo-llama", "prompt": "Once upon a time", "max_tokens": 16}

    def max_tokens(self, body: CompletionBody, defaults: JobDefaults) -> int:
        return body.max_tokens or defaults.max_tokens

    def sampling(self, body: CompletionBody, defaults: JobDefaults) -> Sampling:
        refuse_unknown(body)
        return body_sampling(body, self.max_tokens(body, defaults), body.logprobs)

    def prompt_token_ids(self, tokenizer: Tokenizer, body: CompletionBody) -> list[int]:
        if isinstance(body.prompt, list):
            return list(body.prompt)
        return list(tokenizer.encode(body.prompt))

    def model_of(self, body: CompletionBody) -> str | None:
        return body.model

    def seed_of(self, body: CompletionBody) -> int | None:
        return body.seed

    def packing_prompt(self, body: CompletionBody) -> str | list[int]:
        return body.prompt if isinstance(body.prompt, list) else str(body.prompt)

    def output_line(self, custom_id: str, body: CompletionBody, result: Generation, model: str) -> bytes:
        answer = TextCompletion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model or model,  # planning lets through only the base model or an adapter
            choices=[
                TextChoice(
                    index=index,
                    text=choice.text,
                    logprobs=_completion_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                    finish_reason=choice.finish_reason,
                )
                for index, choice in enumerate(result.choices)
            ],
            usage=usage(result),
        )
        return answer_line(custom_id, answer)
