"""`/v1/chat/completions`: messages rendered with the model's chat template; answered with a
`chat.completion`.

Plain line: `{"custom_id", "messages"}`, or in a chat batch `{"custom_id", "prompt"}` (the
prompt is the one user message).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.endpoints.base import JobDefaults, Tokenizer, UnsupportedRequest, refuse_unknown
from app.jobs.endpoints.generate_call import Generation, Sampling, TokenLogprob
from app.jobs.endpoints.generation import GenerationEndpoint, SampledBody, body_sampling, usage
from app.jobs.output_lines import Usage, answer_line


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatBody(SampledBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)  # at most the model's, checked per line


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: str


class ChatCompletion(BaseModel):
    """A `chat.completion` object, as OpenAI's API answers."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


def _chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(*top) for top in t.top]} for t in tokens]}


class ChatCompletions(GenerationEndpoint[ChatBody]):
    url: ClassVar[str] = "/v1/chat/completions"
    listing_order: ClassVar[int] = 20
    body_model = ChatBody
    required_field: ClassVar[str] = "messages"
    plain_fields: ClassVar[tuple[str, ...]] = ("messages", "prompt")
    example: ClassVar[dict[str, Any]] = {
        "model": "demo-llama",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        "max_completion_tokens": 16,
    }

    def plain_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "prompt" in body:
            body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
        return body

    def max_tokens(self, body: ChatBody, defaults: JobDefaults) -> int:
        if body.max_completion_tokens is not None:
            return body.max_completion_tokens
        return body.max_tokens or defaults.max_tokens

    def sampling(self, body: ChatBody, defaults: JobDefaults) -> Sampling:
        refuse_unknown(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise UnsupportedRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return body_sampling(body, self.max_tokens(body, defaults), logprobs)

    def prompt_token_ids(self, tokenizer: Tokenizer, body: ChatBody) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(str(rendered), add_special_tokens=False))

    def model_of(self, body: ChatBody) -> str | None:
        return body.model

    def seed_of(self, body: ChatBody) -> int | None:
        return body.seed

    def line_param(self, body: ChatBody, engine_field: str | None) -> str | None:
        if engine_field == "logprobs":
            return "top_logprobs"
        if engine_field == "max_tokens" and body.max_completion_tokens is not None:
            return "max_completion_tokens"
        return super().line_param(body, engine_field)

    def packing_prompt(self, body: ChatBody) -> str:
        return "".join(f"{m.role}\n{m.text()}\n" for m in body.messages)

    def output_line(self, custom_id: str, body: ChatBody, result: Generation, model: str) -> bytes:
        answer = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model or model,  # planning lets through only the base model or an adapter
            choices=[
                ChatChoice(
                    index=index,
                    message=ChatMessageOut(content=choice.text),
                    logprobs=_chat_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                    finish_reason=choice.finish_reason,
                )
                for index, choice in enumerate(result.choices)
            ],
            usage=usage(result),
        )
        return answer_line(custom_id, answer)
