"""Expensive work the API does for a caller, kept off the threads that serve requests.

Tokenizing (a queued job's estimate, a dry run, loading the models' tokenizers at
start-up) runs in a separate process at the lowest CPU priority (nice 19): where the API
shares a machine with a worker, as under `make run`, it takes only the CPU the engine
leaves, and it never holds this process's GIL. A thread at low priority would: starved by
the engine, it would keep every request waiting for the lock it holds. The process is
spawned on first use, shared by every app in this process, and started again if it dies.

Work that mostly waits on storage and the database (a retry copying millions of lines)
runs on a small pool of threads of its own, never on the pool that serves requests.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from fastapi import Request

from app.core.priority import LOWEST, lower_thread_priority
from app.core.settings import Settings
from app.core.storage import ObjectStore, open_store
from app.data.json_values import RunInput
from app.data.records import Records
from app.jobs.create import DryRun, JobSpec, dry_run, record_estimate
from app.jobs.estimate import preload_model_files
from app.jobs.run_order import write_run_input

P = ParamSpec("P")
T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_CHECK_SECONDS = 1.0
REGROUP_WAIT_SECONDS = 60.0  # a create call waits this long for its lines' run order, then runs them as they are


class HeavyWork:
    """`process_settings`: the app's settings with the database URL it resolved, for the
    tokenizing process to reach the same database and storage."""

    def __init__(self, threads: int, process_settings: Settings | None = None) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="heavy-work", initializer=lower_thread_priority)
        self.process_settings = process_settings

    async def run(self, action: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `action` on the heavy-work threads and waits for it without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(action, *args, **kwargs))

    async def run_in_process(self, action: Callable[..., T], *args: Any) -> T:
        """Runs `action` (a module-level function; picklable arguments) in the tokenizing
        process and waits for it without blocking the loop."""
        return await asyncio.wrap_future(submit_to_process(action, *args))

    async def dry_run(self, spec: JobSpec, scope: str | None) -> DryRun:
        """The job planned and its tokens counted, in the tokenizing process."""
        return await self.run_in_process(dry_run_in_process, self._settings(), spec, scope)

    def record_estimate(self, job_id: str) -> Future[None]:
        """A queued job's estimate, counted in the tokenizing process after it is created."""
        return submit_to_process(record_estimate_in_process, self._settings(), job_id)

    def run_input(self, job_id: str, input_key: str, endpoint: str, line_count: int) -> RunInput | None:
        """A new job's lines regrouped by prompt prefix (app.jobs.run_order), in the tokenizing
        process; blocks the calling thread (a request's worker thread, not the loop) until done,
        at most REGROUP_WAIT_SECONDS (then TimeoutError: the job runs in input order)."""
        found = submit_to_process(run_input_in_process, self._settings(), job_id, input_key, endpoint, line_count)
        return found.result(timeout=REGROUP_WAIT_SECONDS)

    def preload_model_files(self) -> Future[None]:
        """The served models' tokenizers and configs, loaded in the tokenizing process now."""
        return submit_to_process(preload_in_process, self._settings())

    def _settings(self) -> Settings:
        assert self.process_settings is not None, "HeavyWork made without settings for its process"
        return self.process_settings

    def submit(self, action: Callable[..., Any], *args: Any) -> Future[Any]:
        """Runs `action` later on the heavy-work threads (a background task)."""
        return self._pool.submit(action, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def get_heavy_work(request: Request) -> HeavyWork:
    heavy: HeavyWork = request.app.state.heavy_work
    return heavy


_process_pool: ProcessPoolExecutor | None = None
_process_pool_lock = threading.Lock()


def submit_to_process(action: Callable[..., T], *args: Any) -> Future[T]:
    """Runs `action(*args)` in the tokenizing process; a process that died is replaced."""
    global _process_pool
    with _process_pool_lock:
        for attempt in range(2):
            if _process_pool is None:
                _process_pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_tokenizing_process,
                    initargs=(os.getpid(),),
                )
            try:
                return _process_pool.submit(action, *args)
            except (BrokenProcessPool, RuntimeError):  # it died (an OOM kill): start a new one
                _process_pool.shutdown(wait=False, cancel_futures=True)
                _process_pool = None
                if attempt:
                    raise
    raise AssertionError("unreachable")


def process_priority() -> int:
    """The nice value of the process it runs in (for tests)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def _start_tokenizing_process(parent: int) -> None:
    """Ends with the API, even when the API is SIGKILLed: the kernel's parent-death signal,
    and a watchdog for a parent that died before the signal was asked for (while this
    process was still importing) or whose pipe another process still holds."""
    os.setpriority(os.PRIO_PROCESS, 0, LOWEST)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="orphan-watch", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)


@functools.lru_cache(maxsize=8)
def _records(database_url: str) -> Records:
    from app.core.database import Database

    return Records(Database(database_url))


def context_in_process(settings: Settings) -> tuple[Records, ObjectStore]:
    """In the tokenizing process: the records and store of the app that sent `settings`."""
    records = _records(settings.database_url or "")
    return records, open_store(settings.resolved_storage_url, settings.s3_endpoint_url, settings.s3_region)


# What runs in the tokenizing process; `settings` carry the database URL the app resolved.


def dry_run_in_process(settings: Settings, spec: JobSpec, scope: str | None) -> DryRun:
    records, store = context_in_process(settings)
    return dry_run(records, store, settings, spec, scope)


def record_estimate_in_process(settings: Settings, job_id: str) -> None:
    records, store = context_in_process(settings)
    record_estimate(records, store, settings, job_id)


def run_input_in_process(
    settings: Settings, job_id: str, input_key: str, endpoint: str, line_count: int
) -> RunInput | None:
    _, store = context_in_process(settings)
    return write_run_input(store, job_id, input_key, endpoint, line_count, settings.regroup_distance_lines)


def preload_in_process(settings: Settings) -> None:
    preload_model_files(settings)
