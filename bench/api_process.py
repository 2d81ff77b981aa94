"""The service's API alone, as `app/tools/launcher.py` starts it (uvicorn, one process), on a
fresh database and a local storage folder, with an API key for the benchmark's clients."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from bench.common import BenchConfig, child_env, free_port, fresh_database, log_file, wait_for_port

STOP_SECONDS = 30


@dataclass(frozen=True)
class RunningApi:
    url: str
    api_key: str
    pid: int
    database_url: str

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, **kwargs)  # type: ignore[arg-type]


def _make_key(database_url: str) -> str:
    from app.core.database import Database
    from app.data.keys import create_key
    from app.data.records import Records

    db = Database(database_url)
    try:
        return create_key(Records(db), "bench", name="benchmark")[1]
    finally:
        db.dispose()


@contextmanager
def running_api(config: BenchConfig, name: str) -> Iterator[RunningApi]:
    with (
        fresh_database(config.database_url, f"bench_{name}") as database_url,
        tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as storage,
    ):
        port = free_port()
        env = child_env(
            DATABASE_URL=database_url,
            STORAGE_URL=f"file://{storage}",
            MODEL=config.model,
            PORT=str(port),
        )
        command = [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)]
        command += ["--log-level", "warning"]
        process = subprocess.Popen(command, env=env, stdout=log_file(f"api-{name}"), stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process)
            yield RunningApi(f"http://127.0.0.1:{port}", _make_key(database_url), process.pid, database_url)
        finally:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
