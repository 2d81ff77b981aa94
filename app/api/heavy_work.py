"""Expensive work the API does for a caller (a dry run of a huge file, a retry that copies
millions of lines, a queued job's estimate) runs on its own small pool of threads, never
on the thread pool that serves requests: a big dry run never stalls everyone's polls.

The threads run at the lowest CPU priority (nice 19): where the API shares a machine
with a worker, as under `make run`, an estimate takes only the CPU the engine leaves."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from fastapi import Request

from app.core.priority import lower_thread_priority

P = ParamSpec("P")
T = TypeVar("T")


class HeavyWork:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="heavy-work", initializer=lower_thread_priority)

    async def run(self, action: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `action` on the heavy-work threads and waits for it without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(action, *args, **kwargs))

    def submit(self, action: Callable[..., Any], *args: Any) -> Future[Any]:
        """Runs `action` later (a background task), after the answer is sent."""
        return self._pool.submit(action, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def get_heavy_work(request: Request) -> HeavyWork:
    heavy: HeavyWork = request.app.state.heavy_work
    return heavy
