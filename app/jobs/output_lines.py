"""The output and error lines, in OpenAI's batch output shape (a responses line's body is
`app.jobs.responses.ResponseObject`)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from app.jobs.lines import CHAT_COMPLETIONS, EmbeddingBody, Request
from app.jobs.responses import ResponseObject, ResponsesBody, response_object


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]  # the most likely tokens at this position, best first


@dataclass(frozen=True)
class Choice:
    text: str
    completion_tokens: int
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class RequestTiming:
    """When the engine scheduled a request and produced its first and last tokens
    (the engine's monotonic clock, seconds), and how often it was preempted."""

    scheduled: float
    first_token: float
    last_token: float
    preemptions: int = 0


@dataclass(frozen=True)
class Generation:
    """What the engine made of one request: `n` choices."""

    prompt_tokens: int
    choices: list[Choice]
    timing: RequestTiming | None = None
    cached_tokens: int = 0  # prompt tokens found in the engine's prefix cache

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


@dataclass(frozen=True)
class Embeddings:
    """What the engine made of one embeddings request: one vector per input, in order."""

    prompt_tokens: int  # over all its inputs
    vectors: list[list[float]]
    completion_tokens: int = 0  # nothing is generated


def _chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(*top) for top in t.top]} for t in tokens]}


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


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # found in the engine's prefix cache, not computed again


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: str


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str


class CompletionBody(BaseModel):
    """A `chat.completion` or `text_completion` object, as OpenAI's API answers."""

    id: str
    object: Literal["chat.completion", "text_completion"]
    created: int
    model: str
    choices: list[ChatChoice] | list[TextChoice]
    usage: Usage


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """An embeddings response, as OpenAI's API answers."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class RequestError(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None
    code: str


class ErrorBody(BaseModel):
    error: RequestError


class Response(BaseModel):
    status_code: int
    request_id: str
    body: CompletionBody | EmbeddingList | ResponseObject | ErrorBody


class BatchLineError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of the output or error file (OpenAI's batch output shape)."""

    id: str
    custom_id: str
    response: Response | None
    error: BatchLineError | None

    def jsonl(self) -> bytes:
        return self.model_dump_json().encode() + b"\n"


def _line(
    custom_id: str,
    body: CompletionBody | EmbeddingList | ResponseObject | ErrorBody | None,
    error: BatchLineError | None = None,
) -> bytes:
    request_id = uuid.uuid4().hex
    status = 400 if isinstance(body, ErrorBody) else 200
    response = Response(status_code=status, request_id=request_id, body=body) if body is not None else None
    return OutputLine(id=f"batch_req_{request_id[:24]}", custom_id=custom_id, response=response, error=error).jsonl()


def success_line(request: Request, generation: Generation, model: str) -> bytes:
    """The answer to a line that ran; `model` is the base model's name, answered unless the
    line named one of its LoRA adapters."""
    model = request.body.model or model  # planning lets through only the base model or an adapter
    if isinstance(request.body, ResponsesBody):
        return _line(request.custom_id, response_object(request.body, generation, model))
    chat = request.endpoint == CHAT_COMPLETIONS
    choices: list[ChatChoice] | list[TextChoice]
    if chat:
        choices = [
            ChatChoice(
                index=index,
                message=ChatMessageOut(content=choice.text),
                logprobs=_chat_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                finish_reason=choice.finish_reason,
            )
            for index, choice in enumerate(generation.choices)
        ]
    else:
        choices = [
            TextChoice(
                index=index,
                text=choice.text,
                logprobs=_completion_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                finish_reason=choice.finish_reason,
            )
            for index, choice in enumerate(generation.choices)
        ]
    body = CompletionBody(
        id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        object="chat.completion" if chat else "text_completion",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            total_tokens=generation.prompt_tokens + generation.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=generation.cached_tokens),
        ),
    )
    return _line(request.custom_id, body)


def base64_vector(vector: list[float]) -> str:
    """A vector as OpenAI's `encoding_format: "base64"` gives it: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_line(request: Request, embeddings: Embeddings, model: str) -> bytes:
    """One output line for an embeddings request: every input's vector, in input order."""
    assert isinstance(request.body, EmbeddingBody)
    encode = base64_vector if request.body.encoding_format == "base64" else None
    body = EmbeddingList(
        data=[
            EmbeddingData(index=index, embedding=encode(vector) if encode else vector)
            for index, vector in enumerate(embeddings.vectors)
        ],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=embeddings.prompt_tokens, total_tokens=embeddings.prompt_tokens),
    )
    return _line(request.custom_id, body)


def request_error_line(custom_id: str, message: str, param: str | None, code: str) -> bytes:
    """A request the model could not serve: HTTP 400 inside the response, as OpenAI does."""
    return _line(custom_id, ErrorBody(error=RequestError(message=message, param=param, code=code)))


def batch_error_line(custom_id: str, message: str, code: str) -> bytes:
    """A line the batch never ran (cancelled, expired): `response` is null."""
    return _line(custom_id, None, BatchLineError(code=code, message=message))


def part_key(job_id: str, shard_index: int, seq: int, kind: str) -> str:
    """Where one static batch's results live; `kind` is `out` or `err`."""
    return f"batches/{job_id}/parts/{shard_index:06d}-{seq:06d}.{kind}.jsonl"


def custom_id_of(raw: bytes) -> str:
    """The custom_id of a raw input line, or "" when it has none."""
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
