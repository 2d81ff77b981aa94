"""The API's reader pool (Database.reader: autocommit, no pre-ping): a pooled connection
whose server backend died (Postgres restarted, an admin killed it) costs the next read
nothing, since read_one tries once more on a fresh connection."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.core.database import Database

BACKEND_PID = text("SELECT pg_backend_pid()")


def reader_pid(db: Database) -> int:
    row = db.read_one(BACKEND_PID, {})
    assert row is not None
    return int(row[0])


def terminate(url: str, pid: int) -> None:
    """Ends the backend `pid` and waits until it is gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.02)


def test_a_read_after_the_pooled_readers_backend_was_terminated_still_succeeds(db: Database) -> None:
    pid = reader_pid(db)
    assert reader_pid(db) == pid  # the pool hands the same connection back
    terminate(db.url, pid)

    fresh = reader_pid(db)  # the dead connection fails, is dropped, and the read goes again
    assert fresh != pid
    assert reader_pid(db) == fresh  # and the fresh one serves the reads after it


def test_without_a_pre_ping_the_dead_connection_fails_its_first_use(db: Database) -> None:
    # What read_one's second try is for: the reader pool hands out the dead connection.
    pid = reader_pid(db)
    terminate(db.url, pid)
    with pytest.raises(DBAPIError) as failed, db.reader.connect() as conn:
        conn.execute(BACKEND_PID)
    assert failed.value.connection_invalidated
