"""What keeps `GET /v1/batches/{id}` cheap, held by its behaviour: one statement per poll
on the reader pool (no ping, no transaction, no key lookup while the key is cached),
concurrent polls sharing a read without ever answering another owner, and a poll after
Postgres dropped the pooled connections still answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.api.main import create_app
from app.core.database import Database
from app.core.settings import Settings
from app.data.keys import create_key
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload

CONCURRENT_POLLS = 50


@contextmanager
def counted(db: Database) -> Iterator[dict[str, list[Any]]]:
    """While the block runs: the statements run on the reader (with whether their
    connection was in autocommit, i.e. no BEGIN/COMMIT round trips), the reader's pings,
    and the connections taken from the transactional engine (a key lookup, its ping)."""
    seen: dict[str, list[Any]] = {"reader": [], "autocommit": [], "reader_pings": [], "engine_checkouts": []}

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen["reader"].append(sql)
        seen["autocommit"].append(cursor.connection.autocommit)

    def checkout(*args: Any) -> None:
        seen["engine_checkouts"].append(args)

    ping = db.reader.dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> bool:
        seen["reader_pings"].append(dbapi_connection)
        return ping(dbapi_connection)

    listeners: list[tuple[Any, str, Any]] = [
        (db.reader, "before_cursor_execute", statement),
        (db.engine.pool, "checkout", checkout),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    db.reader.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.reader.dialect.do_ping
        for target, name, listener in listeners:
            event.remove(target, name, listener)


def database_of(app: FastAPI) -> Database:
    records: Records = app.state.records
    return records.db


def a_batch(client: TestClient) -> str:
    return str(create_batch(client, upload(client, jsonl([completion_line("a", "secret prompt")]))["id"])["id"])


def settled(client: TestClient, batch_id: str) -> dict[str, Any]:
    """The batch once its estimate (background work) is recorded: later polls answer the same."""
    deadline = time.monotonic() + 60
    while (body := client.get(f"/v1/batches/{batch_id}").json())["estimate"] is None:
        assert time.monotonic() < deadline, "the estimate (background work) never came"
        time.sleep(0.05)
    return dict(body)


QUIET_SECONDS = 3600  # the sweeper and webhook sender of the app below stay idle meanwhile


def test_a_poll_is_one_statement_on_the_reader(settings: Settings, records: Records) -> None:
    quiet = settings.model_copy(update={"sweep_seconds": QUIET_SECONDS, "webhook_poll_seconds": QUIET_SECONDS})
    app = create_app(quiet)
    with TestClient(app, headers={"Authorization": f"Bearer {create_key(records, 'alice')[1]}"}) as client:
        batch_id = a_batch(client)
        expected = settled(client, batch_id)
        with counted(database_of(app)) as seen:
            polls = [client.get(f"/v1/batches/{batch_id}") for _ in range(5)]
    assert [p.status_code for p in polls] == [200] * 5
    assert all(p.json() == expected for p in polls)
    assert len(seen["reader"]) == 5 and all("FROM jobs" in sql for sql in seen["reader"])
    assert seen["autocommit"] == [True] * 5 and seen["reader_pings"] == []
    assert seen["engine_checkouts"] == []  # no key lookup


async def poll_at_once(app: FastAPI, path: str, secrets: list[str]) -> list[httpx.Response]:
    """One poll per secret, all at once, on one event loop (as uvicorn serves them)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        return await asyncio.gather(*(http.get(path, headers={"Authorization": f"Bearer {s}"}) for s in secrets))


def test_polls_at_once_share_reads_and_never_answer_another_owner(
    app: FastAPI, client: TestClient, records: Records
) -> None:
    batch_id = a_batch(client)
    path = f"/v1/batches/{batch_id}"
    alice, bob = create_key(records, "alice")[1], create_key(records, "bob")[1]
    asyncio.run(poll_at_once(app, path, [alice, bob]))  # both keys verified and cached
    interleaved = [alice, bob] * (CONCURRENT_POLLS // 2)
    with counted(database_of(app)) as seen:
        answers = asyncio.run(poll_at_once(app, path, interleaved))
    for secret, answer in zip(interleaved, answers, strict=True):
        if secret == alice:
            assert answer.status_code == 200 and answer.json()["id"] == batch_id
        else:
            assert answer.status_code == 404, answer.text
            assert "secret" not in answer.text and "alice" not in answer.text
    assert len(seen["reader"]) < CONCURRENT_POLLS / 4  # bob's polls shared alice's reads, and were refused


def test_a_poll_after_postgres_dropped_the_pooled_connections_still_answers(app: FastAPI, client: TestClient) -> None:
    batch_id = a_batch(client)
    before = settled(client, batch_id)
    db = database_of(app)
    with psycopg.connect(db.url, autocommit=True) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
        assert pids, "the API held no connection"
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone():
            assert time.monotonic() < deadline, "backends still there"
            time.sleep(0.02)
    after = client.get(f"/v1/batches/{batch_id}")
    assert after.status_code == 200, after.text
    assert after.json() == before


def test_a_revoked_key_stops_polling_within_key_cache_seconds(settings: Settings, records: Records) -> None:
    key, secret = create_key(records, "carol")
    with TestClient(
        create_app(settings.model_copy(update={"key_cache_seconds": 0.5})),
        headers={"Authorization": f"Bearer {secret}"},
    ) as carol:
        batch_id = a_batch(carol)
        assert carol.get(f"/v1/batches/{batch_id}").status_code == 200
        assert records.revoke_key(key.prefix) == 1
        time.sleep(0.6)
        refused = carol.get(f"/v1/batches/{batch_id}")
        assert refused.status_code == 401 and "carol" not in refused.text
