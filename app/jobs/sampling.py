"""From an OpenAI request body to vLLM `SamplingParams` keyword arguments."""

from __future__ import annotations

from typing import Any

from app.jobs.lines import ChatBody, CompletionBody

# Fields that change nothing in an offline batch, accepted with these values.
TOLERATED = {"stream": (False, None), "user": None, "store": None, "service_tier": None}


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


def _refuse_unknown(body: CompletionBody | ChatBody) -> None:
    for name, value in (body.model_extra or {}).items():
        allowed = TOLERATED.get(name, ())
        if name in TOLERATED and (allowed is None or value in allowed):
            continue
        raise UnsupportedRequest(f"Unsupported parameter '{name}' (value {value!r}) in an offline batch.", param=name)


def _structured_output(response_format: dict[str, Any]) -> dict[str, Any] | None:
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise UnsupportedRequest("response_format.json_schema.schema must be a JSON object.", "response_format")
        return {"json": schema}
    raise UnsupportedRequest(f"Unsupported response_format type {kind!r}.", param="response_format.type")


def _logprobs(body: CompletionBody | ChatBody) -> int | None:
    if isinstance(body, ChatBody):
        if body.top_logprobs is not None and not body.logprobs:
            raise UnsupportedRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def sampling_kwargs(body: CompletionBody | ChatBody, defaults: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `SamplingParams`; `structured_outputs` is a dict the engine
    turns into `StructuredOutputsParams`."""
    _refuse_unknown(body)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens_of(body, defaults), "n": body.n}
    optional = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logprobs": _logprobs(body),
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "structured_outputs": _structured_output(body.response_format) if body.response_format else None,
    }
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    return kwargs
