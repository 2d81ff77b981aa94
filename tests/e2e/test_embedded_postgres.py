"""With no DATABASE_URL the service runs on an embedded PostgreSQL from the wheel."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.database import Database
from app.core.embedded_postgres import start_embedded_postgres
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import ROOT, free_port
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


def test_with_no_variable_set_the_cli_and_the_api_find_the_same_embedded_database(tmp_path: Path) -> None:
    """As the README shows it: `llm-batch keys create` on the embedded default, then the
    API (also on the embedded default) accepts the key; a lost admin key is recovered
    the same way."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STORAGE_URL")}
    env.update(VAR_DIR=str(tmp_path / "var"), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    made = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "keys", "create", "--owner", "alice", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("lb-") and "owner alice, admin" in made.stderr

    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)],
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/v1/batches", headers={"Authorization": f"Bearer {secret}"}, timeout=5
                )
                break
            except httpx.TransportError:
                assert api.poll() is None and time.monotonic() < deadline, "the API did not start"
                time.sleep(0.5)
        assert answer.status_code == 200 and answer.json()["data"] == []
    finally:
        api.terminate()
        api.wait(60)
        stop_embedded_server(tmp_path / "var")


def stop_embedded_server(var: Path) -> None:
    """The server the CLI started outlives it (it is a daemon); a test run leaves none behind."""
    pid_file = var / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
