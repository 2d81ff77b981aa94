"""Request rates per API key: a token bucket per key, kept in each API process (not shared:
with N API processes a key may send N times the rate; RATE_LIMIT_REQUESTS_PER_MINUTE is per
process). Every answer to a caller carries OpenAI's `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests`; past the rate, a 429
`rate_limit_exceeded` with `Retry-After`, which the openai SDK honours on its own retries.
The bucket holds a minute's requests and refills continuously, so a client polling once a
second (60 a minute) is never limited at the default of 6,000."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.core.errors import RateLimited

PRUNE_EVERY = 10_000  # takes between sweeps of buckets that are full again (idle keys)


@dataclass(frozen=True)
class Allowance:
    limit: int  # requests per minute
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: int | None  # set when this request was refused

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit-requests", str(self.limit).encode()),
            (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
            (b"x-ratelimit-reset-requests", f"{self.reset_seconds:.3f}s".encode()),
        ]

    def refusal(self) -> RateLimited:
        assert self.retry_after_seconds is not None
        return RateLimited(
            f"Rate limit: this key may send {self.limit} requests a minute; try again in {self.retry_after_seconds} s.",
            retry_after_seconds=self.retry_after_seconds,
        )


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()
        self._takes = 0

    def take(self, key: str) -> Allowance | None:
        """One request of `key`: its allowance (refused when `retry_after_seconds` is set);
        None when rates are unlimited (0)."""
        if self.per_minute <= 0:
            return None
        per_second = self.per_minute / 60
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * per_second)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[key] = (tokens, now)
            self._takes += 1
            if self._takes % PRUNE_EVERY == 0:
                self._prune(now, per_second)
        retry = None if allowed else max(1, math.ceil((1 - tokens) / per_second))
        return Allowance(self.per_minute, int(tokens), (self.per_minute - tokens) / per_second, retry)

    def _prune(self, now: float, per_second: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * per_second >= self.per_minute]
        for key in full:
            del self._buckets[key]
