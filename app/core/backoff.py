"""Retrying through short outages of Postgres or storage, with exponential backoff.

`Backoff` is the service's one retry schedule: a first wait, doubling after each failure up
to a cap, back to the first after a success. Every retry loop (database and storage calls,
the status listener, the launcher's restarts, webhook deliveries) takes its waits from it;
only the numbers differ. botocore adds its own retries underneath S3 calls (its standard
mode, 3 attempts), so a storage call here may have been tried three times already."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0


@dataclass
class Backoff:
    """Waits that start at `first` seconds and double after each failure, up to `cap`."""

    first: float = FIRST_BACKOFF_SECONDS
    cap: float = MAX_BACKOFF_SECONDS
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.first

    def next(self) -> float:
        """The wait before the next try (the one after it doubles)."""
        wait = self.current
        self.current = min(self.current * 2, self.cap)
        return wait

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.current = self.first

    @staticmethod
    def after(attempts: int, first: float, cap: float) -> float:
        """The wait after failed attempt number `attempts` (from 1), for a schedule kept as a
        count of attempts (a row in Postgres) rather than in memory."""
        return min(first * 2 ** min(attempts - 1, 60), cap)


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
    backoff = Backoff()
    while True:
        try:
            return action()
        except Exception as exc:
            wait = backoff.next()
            if not is_transient(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, wait)
            time.sleep(wait)
