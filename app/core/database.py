"""Database engine and sessions; Postgres only, through psycopg 3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Executable, Row, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

POOL_SIZE = 10
READER_POOL_SIZE = 8  # one read is one short round trip: a few connections serve many pollers
# No overflow: an overflow connection is closed when handed back, so under load the reader
# would connect (a new Postgres backend) for a read of a millisecond.


def sqlalchemy_url(url: str) -> str:
    """Accepts plain `postgresql://` URLs and selects the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a Postgres URL: {url!r}")


def make_engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), pool_size=POOL_SIZE, pool_pre_ping=True)


class Database:
    """Owns the engines and hands out sessions; one per process.

    `engine` serves transactions (every write; a pooled connection is pinged before use).
    `reader` serves the hot single-statement reads of polling: autocommit and no ping, so
    a read is one round trip instead of four (ping, BEGIN, SELECT, COMMIT)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.reader = create_engine(
            sqlalchemy_url(url), pool_size=READER_POOL_SIZE, max_overflow=0, isolation_level="AUTOCOMMIT"
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def read_one(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """One row of one statement, in one round trip. A connection that died while pooled
        (Postgres restarted) fails once; the pool drops it and the read is tried again."""
        for attempt in range(2):
            try:
                with self.reader.connect() as conn:
                    return conn.execute(statement, params).one_or_none()
            except DBAPIError as exc:
                if attempt or not exc.connection_invalidated:
                    raise
        return None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        self.reader.dispose()
