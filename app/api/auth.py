"""Who is calling: API keys checked on every request, with a short cache."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from app.core.errors import Unauthorized
from app.data.keys import hash_secret
from app.data.records import Records


@dataclass(frozen=True)
class Principal:
    """Who is calling: an owner, and whether they may see everyone's work."""

    owner: str
    is_admin: bool
    key_id: str

    @property
    def scope(self) -> str | None:
        """The owner whose objects this caller may see; None means all (admin)."""
        return None if self.is_admin else self.owner


class KeyCache:
    """Recently verified keys, by hash, for `ttl_seconds`: a client polling every second
    costs no key lookup per request. A revoked key keeps working for at most the TTL."""

    def __init__(self, ttl_seconds: float, max_keys: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        # Lookups under way, by key hash: the callers that miss the cache together wait for
        # one lookup instead of each running its own (they would all miss when an entry
        # expires under a hundred pollers). One event loop per API process holds them.
        self._lookups: dict[str, asyncio.Future[Principal]] = {}

    def get(self, secret: str) -> Principal | None:
        entry = self._entries.get(hash_secret(secret.strip()))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def lookup(self, secret: str, fetch: Callable[[], Awaitable[Principal]]) -> Principal:
        """The caller behind `secret`, fetched once however many ask at the same time."""
        key = hash_secret(secret.strip())
        pending = self._lookups.get(key)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(self._fetch(secret, fetch))
            self._lookups[key] = pending
            pending.add_done_callback(
                lambda done: self._lookups.pop(key, None) if self._lookups.get(key) is done else None
            )
        return await asyncio.shield(pending)

    async def _fetch(self, secret: str, fetch: Callable[[], Awaitable[Principal]]) -> Principal:
        principal = await fetch()
        self.put(secret, principal)
        return principal

    def put(self, secret: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= self.max_keys:
                self._entries.clear()
            self._entries[hash_secret(secret.strip())] = (time.monotonic() + self.ttl_seconds, principal)


def authenticate(records: Records, secret: str | None) -> Principal:
    if not secret:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    key = records.key_by_hash(hash_secret(secret.strip()))
    if key is None:
        raise Unauthorized("Incorrect or revoked API key.")
    return Principal(owner=key.owner, is_admin=key.is_admin, key_id=key.id)


async def verify_key(records: Records, cache: KeyCache, secret: str | None) -> Principal:
    """The caller behind `secret`; a key verified in the last few seconds is not looked
    up again, and a lookup runs in a thread, off the event loop."""
    if not secret:
        return authenticate(records, secret)  # raises: no key
    cached = cache.get(secret)
    if cached is not None:
        return cached
    return await cache.lookup(secret, lambda: anyio.to_thread.run_sync(authenticate, records, secret))


def bearer_secret(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` header, else None."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None
