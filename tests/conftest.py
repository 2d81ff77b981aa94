"""Shared fixtures: a database per test cloned from a migrated template, storage on a
local folder or on moto's S3 server over HTTP, and one real vLLM engine per run."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.database import Database
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.core.storage import LocalStore, ObjectStore, S3Store
from app.data.keys import create_key
from app.data.queue import JobQueue
from app.data.records import Records
from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
from worker.engine import VllmEngine

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEMO_MODEL = ROOT / DEFAULT_OUTPUT


def url_for(database: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def admin_sql(sql: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per run; each test gets a copy of it."""
    name = f"llmbatch_tmpl_{uuid.uuid4().hex[:8]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    upgrade(url_for(name))
    yield name
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = f"llmbatch_t_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield url_for(name)
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def records(db: Database) -> Records:
    return Records(db)


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


class MotoServer:
    """moto's standalone S3 server on a fixed port; it keeps its data across a restart."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> None:
        self._server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("moto server did not start")

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(moto_server: MotoServer) -> str:
    """moto's standalone S3 server, spoken to over real HTTP."""
    return moto_server.endpoint


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "storage")


@pytest.fixture
def s3_store(s3_endpoint: str) -> S3Store:
    store = S3Store(f"bucket-{uuid.uuid4().hex[:8]}", "jobs", endpoint_url=s3_endpoint)
    store.ensure_bucket()
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each storage backend in turn."""
    fixture = "local_store" if request.param == "local" else "s3_store"
    result: ObjectStore = request.getfixturevalue(fixture)
    return result


def make_settings(database_url: str, store: ObjectStore, **overrides: object) -> Settings:
    if isinstance(store, S3Store):
        storage_url = f"s3://{store.bucket}/{store.prefix}"
        endpoint = store.client.meta.endpoint_url
    else:
        assert isinstance(store, LocalStore)
        storage_url, endpoint = f"file://{store.root}", None
    values: dict[str, object] = {
        "database_url": database_url,
        "storage_url": storage_url,
        "s3_endpoint_url": endpoint,
        "model": str(DEMO_MODEL),
        "max_model_len": 256,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    with TestClient(application):  # runs the lifespan once for every client below
        yield application


def client_for(app: FastAPI, records: Records, owner: str, *, admin: bool = False) -> TestClient:
    _, secret = create_key(records, owner, admin=admin)
    return TestClient(app, headers={"Authorization": f"Bearer {secret}"})


@pytest.fixture
def client(app: FastAPI, records: Records) -> TestClient:
    """A user's client (owner "alice")."""
    return client_for(app, records, "alice")


@pytest.fixture
def other_client(app: FastAPI, records: Records) -> TestClient:
    """Another owner's client ("bob")."""
    return client_for(app, records, "bob")


@pytest.fixture
def admin_client(app: FastAPI, records: Records) -> TestClient:
    return client_for(app, records, "ops", admin=True)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(DEMO_MODEL)


@pytest.fixture(scope="session")
def engine(demo_model: Path) -> Iterator[VllmEngine]:
    """The real vLLM engine on the demo model, loaded once per test run."""
    vllm_engine = VllmEngine(Settings(model=str(demo_model), max_model_len=256))
    yield vllm_engine
    vllm_engine.shutdown()
