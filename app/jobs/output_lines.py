"""The output and error lines, in OpenAI's batch output shape. The body of an answer is its
endpoint's (`Endpoint.output_line` in `app.jobs.endpoints`), from what its engine call made of
the line (the call's result type); this module holds what every answer shares."""

from __future__ import annotations

import json
import uuid

from pydantic import BaseModel, SerializeAsAny


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # found in the engine's prefix cache, not computed again


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


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
    body: SerializeAsAny[BaseModel]  # the endpoint's answer, or ErrorBody


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


def answer_line(custom_id: str, body: BaseModel | None, error: BatchLineError | None = None) -> bytes:
    """One line of the output (a body) or error file (an ErrorBody, or no response and an error)."""
    request_id = uuid.uuid4().hex
    status = 400 if isinstance(body, ErrorBody) else 200
    response = Response(status_code=status, request_id=request_id, body=body) if body is not None else None
    return OutputLine(id=f"batch_req_{request_id[:24]}", custom_id=custom_id, response=response, error=error).jsonl()


def request_error_line(custom_id: str, message: str, param: str | None, code: str) -> bytes:
    """A request the model could not serve: HTTP 400 inside the response, as OpenAI does."""
    return answer_line(custom_id, ErrorBody(error=RequestError(message=message, param=param, code=code)))


def batch_error_line(custom_id: str, message: str, code: str) -> bytes:
    """A line the batch never ran (cancelled, expired): `response` is null."""
    return answer_line(custom_id, None, BatchLineError(code=code, message=message))


def part_key(job_id: str, shard_index: int, seq: int, kind: str) -> str:
    """Where one window's results live (one or more static batches); `kind` is `out` or `err`."""
    return f"batches/{job_id}/parts/{shard_index:06d}-{seq:06d}.{kind}.jsonl"


def custom_id_of(raw: bytes) -> str:
    """The custom_id of a raw input line, or "" when it has none."""
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
