"""Domain errors. Each carries its HTTP status and OpenAI error type; app/api/errors.py
maps them to responses in one place."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in the tokenizing process and re-raised in the API: subclasses take other
        # arguments than the message, so the error is rebuilt from its fields, not its args.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ServiceError], args: tuple[object, ...], fields: dict[str, object]) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(fields)
    return error


class InvalidRequest(ServiceError):
    pass


class Unauthorized(ServiceError):
    status_code = 401
    code = "invalid_api_key"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"No {kind} found with id '{object_id}'.", param="id")


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "file_too_large"


class LineTooLong(PayloadTooLarge):
    """A line of an upload past the per-line limit: refused as it grows, so an endless
    line cannot hold memory."""

    code = "line_too_long"

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(f"Line {line} is longer than the limit of {limit} bytes.", param="file")
        self.line = line


class QuotaExceeded(ServiceError):
    """An owner's quota (stored bytes, batches not yet ended) would be passed: OpenAI's 429
    `insufficient_quota`. Waiting does not help; freeing what the message names does."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(ServiceError):
    """A key sent more requests than its rate allows: 429 with Retry-After."""

    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailable(ServiceError):
    """Postgres is down or restarting: nothing was lost, and the client should come back."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
    retry_after_seconds = 5  # a restarted embedded Postgres is back within this
