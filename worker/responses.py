"""The output lines, in OpenAI's batch output shape."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from app.batch_lines import CHAT_COMPLETIONS, Request
from worker.engine import Generation


def _line(custom_id: str, status_code: int, body: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    request_id = uuid.uuid4().hex
    response = {"status_code": status_code, "request_id": request_id, "body": body} if body is not None else None
    record = {"id": f"batch_req_{request_id[:24]}", "custom_id": custom_id, "response": response, "error": error}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def success_line(request: Request, generation: Generation, model: str) -> bytes:
    usage = {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }
    created = int(time.time())
    body: dict[str, Any]
    if request.endpoint == CHAT_COMPLETIONS:
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "logprobs": None,
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": usage,
        }
    else:
        body = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "text": generation.text, "logprobs": None, "finish_reason": generation.finish_reason}
            ],
            "usage": usage,
        }
    return _line(request.custom_id, 200, body, None)


def request_error_line(custom_id: str, message: str, param: str | None, code: str) -> bytes:
    """A request the model could not serve: HTTP 400 inside the response, as OpenAI does."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _line(custom_id, 400, {"error": error}, None)


def batch_error_line(custom_id: str, message: str, code: str) -> bytes:
    """A line the batch never ran (cancelled, expired): `response` is null."""
    return _line(custom_id, 0, None, {"code": code, "message": message})
