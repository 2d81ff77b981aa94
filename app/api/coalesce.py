"""Concurrent reads of one thing share one read, and never one that began before they came.

A hundred clients polling one batch ask Postgres the same question at once. Here a read
that arrives while a read of the same key is in flight waits for the *next* read, which
starts when the one in flight ends and serves everyone who came meanwhile: at most one
read per key runs and one waits, whatever the number of callers, and every answer was
read after its request arrived (no staleness beyond a fresh read's own). Callers see
the shared result; whatever depends on the caller (who may see it) is theirs to check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import anyio.to_thread

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CoalescedReads(Generic[K, V]):
    """`await reads.get(key)`: `read(key)` run in a worker thread, shared as above.

    State is kept per event loop (a test's clients may each run their own) and dropped
    as soon as a read ends, so nothing is cached."""

    def __init__(self, read: Callable[[K], V]) -> None:
        self._read = read
        self._running: dict[tuple[asyncio.AbstractEventLoop, K], asyncio.Future[V]] = {}
        self._waiting: dict[tuple[asyncio.AbstractEventLoop, K], asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # held so they are not collected mid-read

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        future = self._waiting.get(slot)
        if future is None:
            future = self._waiting[slot] = loop.create_future()
            future.add_done_callback(_retrieve)
            task = loop.create_task(self._run(slot, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)  # a caller that goes away leaves the read to the others

    async def _run(self, slot: tuple[asyncio.AbstractEventLoop, K], future: asyncio.Future[V]) -> None:
        try:
            before = self._running.get(slot)
            if before is not None:
                await asyncio.wait([before])  # its callers came before ours; ours must read after them
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            del self._waiting[slot]  # from here on, a newcomer waits for the read after this one
        self._running[slot] = future
        try:
            result = await anyio.to_thread.run_sync(self._read, slot[1])
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # every caller of this read gets its failure
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            if self._running.get(slot) is future:
                del self._running[slot]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A failed read whose callers all went away is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()
