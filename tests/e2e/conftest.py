"""Runs the service as a user does: the API under uvicorn and workers as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.database import Database
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import DEMO_EMBEDDING_MODEL, DEMO_MODEL, ROOT, admin_sql, free_port, url_for

STARTUP_SECONDS = 240
UNKILLABLE_SECONDS = 60.0  # a SIGKILLed process still running after this is left to the kernel
LOGS = ROOT / "test-artifacts" / "logs"


class Service:
    """The API process plus any number of worker processes sharing one database and storage."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.env = env
        self.name = name
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        LOGS.mkdir(parents=True, exist_ok=True)

    def _spawn(
        self, args: list[str], log_name: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(LOGS / f"{self.name}-{log_name}.log", "wb")  # noqa: SIM115  (kept open for the child)
        process = subprocess.Popen(
            [sys.executable, *args],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        self._spawn(["-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(self.port)], "api")
        self.wait_for("/healthz")

    def start_worker(self, log_name: str = "worker", **extra_env: str) -> subprocess.Popen[bytes]:
        worker = self._spawn(["-m", "worker"], log_name, extra_env)
        self.workers.append(worker)
        return worker

    def wait_for(self, path: str, timeout: float = STARTUP_SECONDS) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args} exited with {process.returncode}; see {LOGS}")
            try:
                response = httpx.get(self.url + path, timeout=5)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{path} not ready after {timeout}s; see {LOGS}")

    def api_key(self, owner: str = "e2e", admin: bool = False) -> str:
        db = Database(self.env["DATABASE_URL"])
        try:
            return create_key(Records(db), owner, admin=admin)[1]
        finally:
            db.dispose()

    def client(self, owner: str = "e2e") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key(owner)}"}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(UNKILLABLE_SECONDS)
                except subprocess.TimeoutExpired:
                    # Seen on a VM: a worker exiting ran on in the kernel for half an hour with
                    # SIGKILL pending. Nothing more can be done from here; the run goes on.
                    still = f"{process.args} still running {UNKILLABLE_SECONDS:.0f} s after SIGKILL"
                    warnings.warn(still, stacklevel=1)


def _env(database_url: str, storage: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(
        DATABASE_URL=database_url,
        STORAGE_URL=f"file://{storage}",
        MODEL=str(DEMO_MODEL),
        MAX_MODEL_LEN="256",
        EMBEDDING_MODEL=str(DEMO_EMBEDDING_MODEL),
        PORT=str(free_port()),
        POLL_SECONDS="0.2",
        HEARTBEAT_SECONDS="2",
        KEY_CACHE_SECONDS="1",
        WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",  # the tests' webhook receivers listen on loopback
    )
    return env


@pytest.fixture
def service_env(database_url: str, tmp_path: Path, demo_model: Path) -> dict[str, str]:
    return _env(database_url, tmp_path / "storage")


@pytest.fixture
def service(service_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Service]:
    svc = Service(service_env, request.node.name)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def running_service(
    template_database: str, tmp_path_factory: pytest.TempPathFactory, demo_model: Path
) -> Iterator[Service]:
    """One API and one worker shared by every test that needs nothing but a running service
    (the worker's engine loads once per run); each such test works as an owner of its own."""
    name = f"llmbatch_s_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    svc = Service(_env(url_for(name), tmp_path_factory.mktemp("storage")), "shared")
    try:
        svc.start_api()
        svc.start_worker()
        svc.wait_for("/readyz")
        yield svc
    finally:
        svc.stop()
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
