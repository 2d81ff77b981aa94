"""The JSONL request format: parsing and checking one input line.

Two forms are accepted on every line:

- OpenAI batch lines: `{"custom_id", "method": "POST", "url", "body"}` with `url`
  `/v1/completions` (body has `prompt`), `/v1/chat/completions` (body has
  `messages`) or `/v1/embeddings` (body has `input`);
- plain lines: `{"custom_id", "prompt"}`, `{"custom_id", "messages"}` or
  `{"custom_id", "input"}`, optionally with the same fields as a body; the job's
  endpoint and defaults apply.

`/v1/responses` lines (body has `input`; plain: `{"custom_id", "input"}` or a plain
prompt in a responses job) have their own body, `app.jobs.responses.ResponsesBody`. A
plain `input` line fits embeddings and responses alike: the job's endpoint decides which
body parses it; at upload (no endpoint yet) it is read as an embeddings body, else as a
responses body (`_plain_input_endpoint`).

A line that breaks this format is a `LineError` (it fails the job before anything
runs). A well-formed request that the model cannot serve is decided later, per line,
by the worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.jobs.responses import RESPONSES, ResponsesBody

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS, EMBEDDINGS, RESPONSES)
MAX_CUSTOM_ID_CHARS = 512
MAX_EMBEDDING_INPUTS = 2048  # items in one embeddings request, as OpenAI allows


class LineError(ValueError):
    """A line that breaks the input format; `line` counts from 1 as editors do."""

    def __init__(self, line: int, message: str, param: str | None = None) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
        self.param = param

    def as_error(self) -> dict[str, Any]:
        """The entry in a batch's `errors.data` (OpenAI's shape), storable in Postgres
        whatever the line held."""
        param = _storable(self.param) if self.param is not None else None
        return {"code": "invalid_request", "message": _storable(self.message), "param": param, "line": self.line}


def _storable(text: str) -> str:
    """`text` with what Postgres cannot store (NUL, lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class _Body(BaseModel):
    # Unknown fields are kept so the worker can answer each with a line error
    # naming the field, instead of ignoring it silently.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None


class CompletionBody(_Body):
    prompt: str | list[int]
    # How many the engine returns at most is the model's (planning refuses more, per line).
    logprobs: int | None = Field(default=None, ge=0, description="top log probabilities per token")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)  # at most the model's, checked per line


class EmbeddingBody(BaseModel):
    """An embeddings request: one vector per input, all in one output line."""

    model_config = ConfigDict(extra="allow")  # unknown fields are refused per line, naming them

    model: str | None = None
    # A string, a list of strings, a list of token ids or a list of lists of token ids.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        shapes = (
            isinstance(value, list)
            and 0 < len(value) <= MAX_EMBEDDING_INPUTS
            and (
                all(isinstance(item, str) for item in value)
                or all(_is_token_id(item) for item in value)
                or all(isinstance(item, list) and all(_is_token_id(t) for t in item) for item in value)
            )
        )
        if not shapes:
            raise ValueError(
                "input must be a string, a list of strings, a list of token ids or a list of lists of token ids, "
                f"with 1 to {MAX_EMBEDDING_INPUTS} items"
            )
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The request's inputs, one embedding each (a single string or token list is one input)."""
        value: Any = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]
        return list(value)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


Body = CompletionBody | ChatBody | EmbeddingBody | ResponsesBody

BODY_MODELS: dict[str, type[CompletionBody] | type[ChatBody] | type[EmbeddingBody] | type[ResponsesBody]] = {
    COMPLETIONS: CompletionBody,
    CHAT_COMPLETIONS: ChatBody,
    EMBEDDINGS: EmbeddingBody,
    RESPONSES: ResponsesBody,
}
REQUIRED_FIELD = {COMPLETIONS: "prompt", CHAT_COMPLETIONS: "messages", EMBEDDINGS: "input", RESPONSES: "input"}


@dataclass(frozen=True)
class Request:
    """One parsed input line."""

    index: int  # 0-based position in the input file
    custom_id: str
    endpoint: str
    body: Body
    plain: bool  # the plain form, without url and body


def _first_error(exc: ValidationError, prefix: str) -> tuple[str, str]:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    param = f"{prefix}{where}" if where else prefix.rstrip(".")
    return param, f"{param}: {err['msg'].removeprefix('Value error, ')}"


def parse_line(raw: bytes, index: int, job_endpoint: str | None) -> Request:
    """Parses line `index` (0-based). `job_endpoint` is None at upload, when plain
    lines may still go to either endpoint."""
    line = index + 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(line, f"not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(line, f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise LineError(line, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer longer than Python's int max str digits, say
        raise LineError(line, f"not valid JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(obj, dict):
        raise LineError(line, "a line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError(line, "missing custom_id (a non-empty string)", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise LineError(line, f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters", "custom_id")

    if "url" in obj or "body" in obj or "method" in obj:
        url = obj.get("url")
        if url not in ENDPOINTS:
            raise LineError(line, f"unknown url {url!r}; expected one of {', '.join(ENDPOINTS)}", "url")
        if obj.get("method", "POST") != "POST":
            raise LineError(line, f"method must be POST, not {obj.get('method')!r}", "method")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise LineError(line, "body must be a JSON object", "body")
        if job_endpoint is not None and url != job_endpoint:
            raise LineError(line, f"url {url} does not match the batch's endpoint {job_endpoint}", "url")
        endpoint, prefix, plain = url, "body.", False
    else:
        body = {k: v for k, v in obj.items() if k != "custom_id"}
        endpoint, given = _plain_endpoint(line, body, job_endpoint)
        if endpoint == CHAT_COMPLETIONS and "prompt" in body:
            body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
        if job_endpoint is not None and job_endpoint != endpoint:
            raise LineError(line, f"{given} given, but the batch's endpoint is {job_endpoint}", given)
        if endpoint == RESPONSES and "prompt" in body and "input" not in body:
            body["input"] = body.pop("prompt")  # a plain prompt in a responses job is its input
        elif endpoint == EMBEDDINGS and job_endpoint is None:
            endpoint = _plain_input_endpoint(body)
        prefix, plain = "", True

    model = BODY_MODELS[endpoint]
    required = REQUIRED_FIELD[endpoint]
    if required not in body:
        raise LineError(line, f"missing {prefix}{required}", f"{prefix}{required}")
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        param, message = _first_error(exc, prefix)
        raise LineError(line, message, param) from None
    except RecursionError:
        raise LineError(line, "nested too deeply") from None
    return Request(index=index, custom_id=custom_id, endpoint=endpoint, body=parsed, plain=plain)


def _plain_endpoint(line: int, body: dict[str, Any], job_endpoint: str | None) -> tuple[str, str]:
    """The endpoint a plain line asks for, and the field that says so."""
    if "messages" in body:
        return CHAT_COMPLETIONS, "messages"
    if "prompt" in body:
        return (job_endpoint if job_endpoint in (CHAT_COMPLETIONS, RESPONSES) else COMPLETIONS), "prompt"
    if "input" in body:
        return (RESPONSES if job_endpoint == RESPONSES else EMBEDDINGS), "input"
    raise LineError(line, "missing prompt (or messages, or input, or url and body)", "prompt")


def _plain_input_endpoint(body: dict[str, Any]) -> str:
    """At upload, the endpoint a plain `input` line is checked for: embeddings if its body
    is an embeddings body, else responses if it is a responses body; failing both, the one
    its `input` looks like (a list of objects: messages), which names the error."""
    for endpoint in (EMBEDDINGS, RESPONSES):
        try:
            BODY_MODELS[endpoint].model_validate(body)
        except (ValidationError, RecursionError):
            continue
        return endpoint
    value = body.get("input")
    messages = isinstance(value, list) and any(isinstance(item, dict) for item in value)
    return RESPONSES if messages else EMBEDDINGS
