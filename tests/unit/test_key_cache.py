"""The key cache looks a key up once however many callers miss it at the same time."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.api.auth import KeyCache, verify_key
from app.core.errors import Unauthorized
from app.data.keys import hash_secret


class SlowKeys:
    """Records' key lookup, slow as Postgres is on a loaded machine; counts its lookups."""

    def __init__(self, known: str | None) -> None:
        self.known = hash_secret(known) if known else None
        self.lookups = 0

    def key_by_hash(self, digest: str) -> object:
        self.lookups += 1
        time.sleep(0.2)
        if digest != self.known:
            return None
        return type("Key", (), {"owner": "alice", "is_admin": False, "id": "key_1"})()


def test_a_hundred_callers_that_miss_together_share_one_lookup() -> None:
    keys, cache = SlowKeys("lb-secret"), KeyCache(ttl_seconds=5)

    async def callers() -> list[object]:
        return list(await asyncio.gather(*(verify_key(keys, cache, "lb-secret") for _ in range(100))))  # type: ignore[arg-type]

    principals = asyncio.run(callers())
    assert keys.lookups == 1
    assert {p.owner for p in principals} == {"alice"}  # type: ignore[attr-defined]
    asyncio.run(callers())  # cached now
    assert keys.lookups == 1


def test_callers_of_an_unknown_key_share_the_refusal_and_it_is_not_cached() -> None:
    keys, cache = SlowKeys(None), KeyCache(ttl_seconds=5)

    async def callers() -> list[object]:
        calls = (verify_key(keys, cache, "lb-wrong") for _ in range(20))  # type: ignore[arg-type]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    outcomes = asyncio.run(callers())
    assert keys.lookups == 1 and all(isinstance(o, Unauthorized) for o in outcomes)
    with pytest.raises(Unauthorized):
        asyncio.run(verify_key(keys, cache, "lb-wrong"))  # type: ignore[arg-type]
    assert keys.lookups == 2
