"""CoalescedReads: callers at once share a read, and none gets a read begun before it came."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.api.coalesce import CoalescedReads

WAIT_SECONDS = 10


class Source:
    """A value the reads see, and a gate that holds each read until the test opens it."""

    def __init__(self) -> None:
        self.value = 0
        self.reads: list[int] = []
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def read(self, key: str) -> tuple[str, int]:
        value = self.value  # what a read sees is fixed when it begins, as a statement's snapshot
        self.reads.append(value)
        self.started.release()
        assert self.gate.wait(WAIT_SECONDS)
        return key, value


async def started(source: Source) -> None:
    assert await asyncio.to_thread(source.started.acquire, True, WAIT_SECONDS)


def test_callers_at_once_share_one_read_and_a_newcomer_waits_for_the_next() -> None:
    async def scenario() -> None:
        source = Source()
        reads = CoalescedReads(source.read)
        first = asyncio.ensure_future(reads.get("b"))
        await started(source)  # the first read is in flight, holding the value 0
        source.value = 1  # a write the callers below arrive after
        later = [asyncio.ensure_future(reads.get("b")) for _ in range(50)]
        await asyncio.sleep(0)
        source.gate.set()
        assert await first == ("b", 0)
        assert await asyncio.gather(*later) == [("b", 1)] * 50  # one read, begun after they came
        assert source.reads == [0, 1]

    asyncio.run(scenario())


def test_each_key_is_read_on_its_own() -> None:
    async def scenario() -> None:
        source = Source()
        source.gate.set()
        reads = CoalescedReads(source.read)
        assert await asyncio.gather(reads.get("a"), reads.get("b")) == [("a", 0), ("b", 0)]
        assert len(source.reads) == 2

    asyncio.run(scenario())


def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    calls: list[str] = []

    def read(key: str) -> str:
        calls.append(key)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return key

    async def scenario() -> None:
        reads = CoalescedReads(read)
        with pytest.raises(ConnectionError):
            await reads.get("b")
        assert await reads.get("b") == "b"

    asyncio.run(scenario())
    assert calls == ["b", "b"]


def test_a_caller_that_goes_away_leaves_the_read_to_the_others() -> None:
    async def scenario() -> None:
        source = Source()
        reads = CoalescedReads(source.read)
        leaving = asyncio.ensure_future(reads.get("b"))
        staying = asyncio.ensure_future(reads.get("b"))
        await started(source)
        leaving.cancel()
        source.gate.set()
        assert await staying == ("b", 0)
        assert leaving.cancelled()
        assert source.reads == [0]

    asyncio.run(scenario())
