"""The JSONL request format: parsing and checking one input line.

Two forms are accepted on every line:

- OpenAI batch lines: `{"custom_id", "method": "POST", "url", "body"}`, the body checked
  by the model of the kind that serves `url` (`app.jobs.endpoints`);
- plain lines: `{"custom_id", "prompt"}`, `{"custom_id", "messages"}`,
  `{"custom_id", "input"}`, `{"custom_id", "query", "documents"}` (rerank) or
  `{"custom_id", "text_1", "text_2"}` (score), optionally with the same fields as a body; the job's
  endpoint and defaults apply (each kind's `plain_fields` say which plain lines it takes,
  and `plain_body` how one becomes its body). At upload (no endpoint yet) a plain line is
  the kind whose own field it gives; a plain `input` fits embeddings and responses alike,
  and is the first whose body parses it.

A line that breaks this format is a `LineError` (it fails the job before anything
runs). A well-formed request that the model cannot serve is decided later, per line,
by the worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from app.data.json_values import JobError
from app.jobs.endpoints import PLAIN_FIELDS, Endpoint, endpoint_for, is_endpoint, listed, plain_line_endpoints

MAX_CUSTOM_ID_CHARS = 512


class LineError(ValueError):
    """A line that breaks the input format; `line` counts from 1 as editors do."""

    def __init__(self, line: int, message: str, param: str | None = None) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
        self.param = param

    def as_error(self) -> JobError:
        """The entry in a batch's `errors.data` (OpenAI's shape), storable in Postgres
        whatever the line held."""
        param = _storable(self.param) if self.param is not None else None
        return {"code": "invalid_request", "message": _storable(self.message), "param": param, "line": self.line}


def _storable(text: str) -> str:
    """`text` with what Postgres cannot store (NUL, lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


@dataclass(frozen=True)
class Request:
    """One parsed input line."""

    index: int  # 0-based position in the input file
    custom_id: str
    endpoint: str  # the URL of the kind that serves it (`app.jobs.endpoints.endpoint_for`)
    body: BaseModel  # that kind's body model
    plain: bool  # the plain form, without url and body

    @property
    def kind(self) -> Endpoint[Any]:
        return endpoint_for(self.endpoint)

    def answer(self, result: Any, model: str) -> bytes:
        """The output line of this line, run: `result` is what the engine made of it."""
        return self.kind.output_line(self.custom_id, self.body, result, model)


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
        if not is_endpoint(url):
            raise LineError(line, f"unknown url {url!r}; expected one of {listed()}", "url")
        if obj.get("method", "POST") != "POST":
            raise LineError(line, f"method must be POST, not {obj.get('method')!r}", "method")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise LineError(line, "body must be a JSON object", "body")
        if job_endpoint is not None and url != job_endpoint:
            raise LineError(line, f"url {url} does not match the batch's endpoint {job_endpoint}", "url")
        endpoint, prefix, plain = endpoint_for(str(url)), "body.", False
    else:
        body = {k: v for k, v in obj.items() if k != "custom_id"}
        endpoint = _plain_endpoint(line, body, job_endpoint)
        body = endpoint.plain_body(body)
        prefix, plain = "", True

    required = endpoint.required_field
    if not any(name in body for name in (required, *endpoint.required_aliases)):
        raise LineError(line, f"missing {prefix}{required}", f"{prefix}{required}")
    try:
        parsed = endpoint.body_model.model_validate(body)
    except ValidationError as exc:
        param, message = _first_error(exc, prefix)
        raise LineError(line, message, param) from None
    except RecursionError:
        raise LineError(line, "nested too deeply") from None
    return Request(index=index, custom_id=custom_id, endpoint=endpoint.url, body=parsed, plain=plain)


def _plain_endpoint(line: int, body: dict[str, Any], job_endpoint: str | None) -> Endpoint[Any]:
    """The kind a plain line is: the batch's, if the line's field is one it takes; at upload,
    the kind whose own field the line gives (`_plain_upload_endpoint` when several share it)."""
    given = _plain_field(body)
    if given is None:
        raise LineError(line, "missing prompt (or messages, or input, or url and body)", "prompt")
    if job_endpoint is not None:
        endpoint = endpoint_for(job_endpoint)
        if given not in endpoint.plain_fields:
            raise LineError(line, f"{given} given, but the batch's endpoint is {job_endpoint}", given)
        return endpoint
    return _plain_upload_endpoint(given, body)


def _plain_field(body: dict[str, Any]) -> str | None:
    return next((name for name in PLAIN_FIELDS if name in body), None)


def plain_upload_endpoint(body: dict[str, Any]) -> Endpoint[Any] | None:
    """The kind a plain line (its fields) is read as with no batch to decide, as at upload;
    None when it gives no plain field."""
    given = _plain_field(body)
    return _plain_upload_endpoint(given, body) if given is not None else None


def _plain_upload_endpoint(given: str, body: dict[str, Any]) -> Endpoint[Any]:
    """At upload, the kind a plain line is checked for among those whose own field it gives:
    the first whose body parses it; failing all, the one it looks meant for (a list of
    objects as `input`: messages), which names the error."""
    candidates = plain_line_endpoints(given)
    if len(candidates) == 1:
        return candidates[0]
    for endpoint in candidates:
        try:
            endpoint.body_model.model_validate(endpoint.plain_body(dict(body)))
        except (ValidationError, RecursionError):
            continue
        return endpoint
    return next((endpoint for endpoint in candidates if endpoint.looks_like(body)), candidates[0])
