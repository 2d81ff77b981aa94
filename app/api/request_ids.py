"""An id for every request, in the `X-Request-Id` response header and in the log line of
any 500, so a caller's report and the server's log meet; and the time the app took, in a
`Server-Timing` header (`app;dur=<ms>`), so a client can tell a slow server from a slow path
to it."""

from __future__ import annotations

import random
import time

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_BITS = 96
SERVER_TIMING_HEADER = "Server-Timing"


def new_request_id() -> str:
    """96 random bits: unique enough to find one request in a log, and unguessable is not
    needed, so no system call per request (`secrets` reads the kernel's random source)."""
    return f"req_{random.getrandbits(REQUEST_ID_BITS):024x}"


def request_id_of(request: Request) -> str:
    """The id RequestIds gave this request (a fresh one where it did not run)."""
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id or new_request_id()


class RequestIds:
    """Pure ASGI middleware: names each request and returns the name as a header, with the
    milliseconds from the request reaching the app to its answer starting."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
                took = (time.perf_counter() - began) * 1000
                headers.append(SERVER_TIMING_HEADER, f"app;dur={took:.1f}")
            await send(message)

        await self.app(scope, receive, send_with_id)
