"""Wakes long polls when a batch's status changes: one LISTEN connection per API process.

Postgres notifies `STATUS_CHANNEL` with the job's id whenever a job's status changes (a
trigger on `jobs`, migration 0015, so no code path that writes a status can forget it). A
thread here listens and sets the asyncio events of the polls waiting on that id. Losing a
notification costs a waiter its wake-up, never its answer: waiters read again at least every
`RECHECK_SECONDS`, and every `FALLBACK_SECONDS` while the listening connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator

import psycopg

from app.core.backoff import Backoff
from app.data.models import STATUS_CHANNEL

log = logging.getLogger(__name__)

RECHECK_SECONDS = 10.0  # a waiter reads again this often even when no notification came
FALLBACK_SECONDS = 1.0  # ... and this often while the listening connection is down


class Watch:
    def __init__(self, changes: StatusChanges, event: asyncio.Event) -> None:
        self._changes, self._event = changes, event

    async def wait(self, seconds: float) -> None:
        """Returns when the job's status may have changed (a notification named it) or
        after `seconds` (at most the recheck interval), whichever comes first."""
        limit = RECHECK_SECONDS if self._changes.listening else FALLBACK_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), min(seconds, limit))
        self._event.clear()


class StatusChanges:
    """One listening thread; `with changes.watch(job_id) as watch: await watch.wait(s)`."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self._lock = threading.Lock()
        self._waiters: defaultdict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = False  # the LISTEN connection is up: notifications arrive

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Notifications of `job_id` from here on; read the job after entering, not before,
        so a change between the read and the wait is not missed."""
        self._start()
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[job_id].add(waiter)
        try:
            yield Watch(self, waiter[1])
        finally:
            with self._lock:
                waiting = self._waiters.get(job_id)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[job_id]

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._listen, name="status-changes", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {STATUS_CHANNEL}")
                    self.listening = True
                    backoff.reset()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._wake(note.payload)
            except psycopg.Error as exc:
                if self.listening:
                    log.warning("status notifications lost (%s); long polls read every %.0f s", exc, FALLBACK_SECONDS)
                self.listening = False
                self._wake_all()  # waiters fall back to reading on their own
                self._stop.wait(backoff.next())
        self.listening = False

    def _wake(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that poll's loop has closed
                loop.call_soon_threadsafe(event.set)

    def _wake_all(self) -> None:
        with self._lock:
            ids = list(self._waiters)
        for job_id in ids:
            self._wake(job_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
