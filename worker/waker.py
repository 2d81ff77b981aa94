"""Wakes an idle worker when work arrives (Postgres LISTEN/NOTIFY); polling is the fallback."""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg

from app.data.claims import WORK_CHANNEL

log = logging.getLogger(__name__)


class Waker:
    def __init__(self, database_url: str) -> None:
        self._url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self._conn: psycopg.Connection | None = None

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
        try:
            conn = self._connect()
            return any(True for _ in conn.notifies(timeout=0))
        except psycopg.Error:
            log.warning("LISTEN connection lost; looking for work every poll instead")
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
