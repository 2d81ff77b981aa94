"""Maps domain errors and request validation errors to OpenAI's error shape, in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.core.errors import ServiceError


def _error(status: int, message: str, error_type: str, param: str | None, code: str | None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return _error(400, message, "invalid_request_error", param, "invalid_value")
