"""Retrying through short outages of Postgres or storage, with exponential backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0


def is_transient(exc: BaseException) -> bool:
    """Errors an outage causes (connection refused, dropped, server restarting)."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return int(status) >= 500
    return isinstance(exc, BotoCoreError | ConnectionError | TimeoutError)


def retry_transient(action: Callable[[], T], *, what: str, give_up_after_seconds: float) -> T:
    """Runs `action`, retrying transient failures until `give_up_after_seconds` pass."""
    deadline = time.monotonic() + give_up_after_seconds
    backoff = FIRST_BACKOFF_SECONDS
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + backoff > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
