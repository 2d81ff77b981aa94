"""Hostile input costs only its sender: for /v1/*, the caller is known (from headers)
and the body's size allowed before the app reads a byte of the body; bodies elsewhere
(the dashboard's forms) are capped the same way.

Without this, FastAPI parses (or spools) a body before its dependencies run, so a
300 MB body with no API key was read whole. Uploads (multipart POST /v1/files) stream
under their own limits (MAX_UPLOAD_BYTES, MAX_UPLOAD_LINES, MAX_LINE_BYTES), an Upload's
parts (POST /v1/uploads/{id}/parts) under UPLOAD_PART_MAX_BYTES; every
other body is capped at MAX_JSON_BODY_BYTES, by its Content-Length and while it streams.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import Principal, bearer_secret, verify_key
from app.api.errors import DATABASE_AWAY, database_unavailable, service_error_json
from app.api.text import unstorable
from app.core.errors import InvalidRequest, PayloadTooLarge, ServiceError


def guarded(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


# Multipart bodies that stream under their own limits: files, and an Upload's parts.
STREAMED_PATH = re.compile(r"/v1/files|/v1/uploads/[^/]+/parts")


def is_upload(scope: Scope, headers: Headers) -> bool:
    content_type = headers.get("content-type", "").lower()
    return (
        scope["method"] == "POST"
        and STREAMED_PATH.fullmatch(scope["path"]) is not None
        and content_type.startswith("multipart/")
    )


class RequestGate:
    """Pure ASGI middleware: 401 before the body for a missing or wrong key, 429 past the
    key's request rate (app.api.rate_limits, its headers on every answer), 413 for a
    body over the JSON cap. The caller it found waits in `scope["state"]["principal"]`
    for the `CallerDep` dependency, so the key is looked up once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        headers = Headers(scope=scope)
        try:
            if guarded(scope["path"]):
                caller = await self._caller(state, headers.get("authorization"))
                scope.setdefault("state", {})["principal"] = caller
                allowance = state.rate_limiter.take(caller.key_id)
                if allowance is not None:
                    send = _with_headers(send, allowance.headers())
                    if allowance.retry_after_seconds is not None:
                        raise allowance.refusal()
                if is_upload(scope, headers):
                    await self.app(scope, receive, send)
                    return
            # Every other body (the dashboard's login form included) is capped too.
            body = await _read_capped(headers, receive, state.settings.max_json_body_bytes)
        except ServiceError as exc:
            await service_error_json(exc)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _caller(state: Any, authorization: str | None) -> Principal:
        secret = bearer_secret(authorization)
        if secret is not None and (reason := unstorable(secret)):
            raise InvalidRequest(f"Authorization: the API key {reason}.", param="authorization", code="invalid_value")
        try:
            return await verify_key(state.records, state.key_cache, secret)
        except DATABASE_AWAY as exc:  # the gate runs outside the app's error handlers
            raise database_unavailable() from exc


async def _read_capped(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The whole body, refused by its Content-Length or as soon as it streams past `limit`;
    None if the client disconnects first."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise InvalidRequest("Content-Length is not a number.", param="content-length", code="invalid_value")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the limit of {limit} bytes (MAX_JSON_BODY_BYTES); "
        "upload files as multipart to /v1/files.",
        code="request_too_large",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the real one (for disconnects)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """A `send` that adds `headers` to the response's start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending
