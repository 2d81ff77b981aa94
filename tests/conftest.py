"""Fixtures every tier that touches a database shares: a database per test cloned from a
migrated template, moto's S3 server over HTTP, the demo models, and the real vLLM engines
on them, each loaded once per run and shared by the in-process tier and the e2e tier's
reference answers. Unit tests use none of them; the
in-process API and storage backends live in tests/integration/conftest.py, the processes
in tests/e2e/conftest.py."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.core.database import Database
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.core.storage import S3Store
from app.data.queue import JobQueue
from app.data.records import Records
from app.tools.demo_model import (
    DEFAULT_EMBEDDING_OUTPUT,
    DEFAULT_LORA_OUTPUT,
    DEFAULT_OUTPUT,
    ensure_demo_embedding_model,
    ensure_demo_lora,
    ensure_demo_model,
)
from worker.engine import VllmEngine

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEMO_MODEL = ROOT / DEFAULT_OUTPUT
DEMO_EMBEDDING_MODEL = ROOT / DEFAULT_EMBEDDING_OUTPUT
DEMO_LORA = ROOT / DEFAULT_LORA_OUTPUT
LORA_RANK = 8  # the shared LoRA engine's max_lora_rank

# moto's credentials, set before anything starts: the API's tokenizing process (spawned by
# the first test that creates a batch) reads S3 with the environment it was started with.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


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
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(moto_server: MotoServer) -> str:
    """moto's standalone S3 server, spoken to over real HTTP."""
    return moto_server.endpoint


@pytest.fixture
def s3_store(s3_endpoint: str) -> S3Store:
    store = S3Store(f"bucket-{uuid.uuid4().hex[:8]}", "jobs", endpoint_url=s3_endpoint)
    store.ensure_bucket()
    return store


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(DEMO_MODEL)


@pytest.fixture(scope="session")
def demo_embedding_model() -> Path:
    return ensure_demo_embedding_model(DEMO_EMBEDDING_MODEL)


@pytest.fixture(scope="session")
def demo_lora() -> Path:
    return ensure_demo_lora(DEMO_LORA)


@pytest.fixture(scope="session")
def engine(demo_model: Path) -> Iterator[VllmEngine]:
    """The real vLLM engine on the demo model, loaded once per test run."""
    vllm_engine = VllmEngine(Settings(model=str(demo_model), max_model_len=256))
    yield vllm_engine
    vllm_engine.shutdown()


@pytest.fixture(scope="session")
def embedding_engine(demo_embedding_model: Path) -> Iterator[VllmEngine]:
    """The real vLLM pooling engine on the demo embedding model, loaded once per test run."""
    vllm_engine = VllmEngine(Settings(worker_kind="embed", embedding_model=str(demo_embedding_model)))
    yield vllm_engine
    vllm_engine.shutdown()


@pytest.fixture(scope="session")
def lora_modules(demo_lora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two LoRA adapters of the demo model: the demo one, and one from another seed."""
    other = ensure_demo_lora(tmp_path_factory.mktemp("adapters") / "poet", seed=99)
    return {"pirate": str(demo_lora), "poet": str(other)}


@pytest.fixture(scope="session")
def lora_engine(demo_model: Path, lora_modules: dict[str, str]) -> Iterator[VllmEngine]:
    """A second real engine: the demo model with both adapters registered and compact JSON
    structured outputs (COMPACT_JSON), for tests/integration/test_lora.py and the e2e LoRA
    test's reference answers."""
    settings = Settings(
        model=str(demo_model), max_model_len=256, lora_modules=lora_modules, max_lora_rank=LORA_RANK, compact_json=True
    )
    vllm_engine = VllmEngine(settings)
    yield vllm_engine
    vllm_engine.shutdown()
