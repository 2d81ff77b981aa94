"""Maps every error to OpenAI's error shape, in one place: domain errors, request
validation, the framework's own (unknown path, wrong method) and, as a last resort,
anything unexpected (a 500 naming the request id, never a stack trace)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.api.request_ids import REQUEST_ID_HEADER, request_id_of
from app.api.text import printable
from app.core.errors import ServiceError, ServiceUnavailable

log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
# What a lost connection to Postgres raises (psycopg's, wrapped by SQLAlchemy).
DATABASE_AWAY = (OperationalError, InterfaceError)


def error_json(status: int, message: str, error_type: str, param: str | None, code: str | None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={
            "error": {
                "message": printable(message),
                "type": error_type,
                "param": printable(param) if param is not None else None,
                "code": code,
            }
        },
    )


def service_error_json(exc: ServiceError) -> JSONResponse:
    response = error_json(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)
    retry_after = getattr(exc, "retry_after_seconds", None)  # ServiceUnavailable, RateLimited
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def database_unavailable() -> ServiceUnavailable:
    """A request that needed Postgres while it is away: 503, never 500."""
    return ServiceUnavailable(
        "The service's database is unavailable for a moment; nothing was lost. Retry after a few seconds."
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return service_error_json(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return error_json(
                400, f"The body is not valid JSON: {reason}", "invalid_request_error", None, "invalid_json"
            )
        loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return error_json(400, message, "invalid_request_error", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The framework's own refusals: an unknown path, a method the path does not take."""
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"Invalid URL ({request.method} {request.url.path})."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        response = error_json(exc.status_code, message, "invalid_request_error", None, HTTP_CODES.get(exc.status_code))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        """Nobody is left to read the answer; nothing to log but a line."""
        request_id = request_id_of(request)
        log.info("client disconnected during %s %s (request id %s)", request.method, request.url.path, request_id)
        return error_json(400, "The client disconnected.", "invalid_request_error", None, "client_disconnected")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, str(exc)[:200])
        return service_error_json(database_unavailable())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """Anything unexpected: logged with the request id, answered without the details."""
        request_id = request_id_of(request)
        where = f"{request.method} {request.url.path}"
        log.error("unhandled error in %s (request id %s)", where, request_id, exc_info=exc)
        response = error_json(
            500, f"Internal server error (request id {request_id}).", "server_error", None, "internal_error"
        )
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
