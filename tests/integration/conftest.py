"""The in-process tier: the API app with its clients and storage backends (local by default;
tests where storage matters ask for both). The real engines are in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings
from app.core.storage import LocalStore, ObjectStore, S3Store
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import DEMO_EMBEDDING_MODEL, DEMO_MODEL


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "storage")


@pytest.fixture
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Local storage, or each backend in turn where a test (or module) says
    `@both_stores` (tests.helpers)."""
    fixture = "s3_store" if getattr(request, "param", "local") == "s3" else "local_store"
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
        "embedding_model": str(DEMO_EMBEDDING_MODEL),
        "sweep_seconds": 3600,  # tests sweep when they mean to; a cancel still pokes the sweeper
        "webhook_allow_private_addresses": True,  # the tests' webhook receivers listen on loopback
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
