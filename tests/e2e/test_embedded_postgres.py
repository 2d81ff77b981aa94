"""With no DATABASE_URL the service runs on an embedded PostgreSQL from the wheel."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.database import Database
from app.core.embedded_postgres import start_embedded_postgres
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.data.keys import create_key
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload


def test_the_embedded_default_database_serves_the_api(tmp_path: Path) -> None:
    url, server = start_embedded_postgres(tmp_path / "var")
    try:
        upgrade(url)
        settings = Settings(database_url=url, storage_url=f"file://{tmp_path / 'storage'}")
        db = Database(url)
        _, secret = create_key(Records(db), "someone")
        db.dispose()
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {secret}"}) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            batch = create_batch(client, upload(client, jsonl([completion_line("a", "hi")]))["id"])
            assert client.get(f"/v1/batches/{batch['id']}").json()["queue_status"] == "queued"
        assert (tmp_path / "var" / "postgres" / "PG_VERSION").exists()
    finally:
        server.cleanup()
