"""Wakes an idle worker when work arrives (Postgres LISTEN/NOTIFY); polling is the fallback."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg

from app.data.claims import WORK_CHANNEL

log = logging.getLogger(__name__)
RECONNECT_PAUSE_SECONDS = 5.0


class Waker:
    def __init__(self, database_url: str) -> None:
        self._url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self._conn: psycopg.Connection | None = None
        self._reconnect_at = 0.0

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True)
            self._conn.execute(f"LISTEN {WORK_CHANNEL}")
        return self._conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Returns on a notification, after `timeout` seconds, or soon after `stop` is set."""
        try:
            conn = self._connect()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error:
            log.warning("LISTEN connection lost; polling until it is back")
            self.close()
            stop.wait(timeout)

    def pending(self) -> bool:
        """Whether work was announced since the last look; never waits (a busy worker asks
        between engine steps)."""
        if self._conn is None and time.monotonic() < self._reconnect_at:
            return False  # Postgres was away: no reconnect on every engine step
        try:
            conn = self._connect()
            return any(True for _ in conn.notifies(timeout=0))
        except psycopg.Error:
            log.warning("LISTEN connection lost; looking for work every poll instead")
            self.close()
            self._reconnect_at = time.monotonic() + RECONNECT_PAUSE_SECONDS
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
