"""From an OpenAI request body to vLLM `SamplingParams` keyword arguments."""

from __future__ import annotations

from typing import Any

from app.batch_lines import ChatBody, CompletionBody

# Fields that change nothing in an offline batch and are accepted as given.
TOLERATED = {"user": None, "stream": False, "n": 1}


class UnsupportedRequest(ValueError):
    """A well-formed request this service cannot honour; it becomes one error line."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def max_tokens_of(body: CompletionBody | ChatBody, defaults: dict[str, Any]) -> int:
    if isinstance(body, ChatBody) and body.max_completion_tokens is not None:
        return body.max_completion_tokens
    return body.max_tokens or int(defaults["max_tokens"])


def sampling_kwargs(body: CompletionBody | ChatBody, defaults: dict[str, Any]) -> dict[str, Any]:
    for name, value in (body.model_extra or {}).items():
        if (name in TOLERATED and value in (TOLERATED[name], None)) or name == "user":
            continue
        raise UnsupportedRequest(f"Unsupported parameter '{name}' (value {value!r}).", param=name)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens_of(body, defaults)}
    if body.temperature is not None:
        kwargs["temperature"] = body.temperature
    if body.top_p is not None:
        kwargs["top_p"] = body.top_p
    if body.seed is not None:
        kwargs["seed"] = body.seed
    if body.stop is not None:
        kwargs["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    return kwargs
