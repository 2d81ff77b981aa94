"""With Postgres away, every route answers 503 in OpenAI's error shape with Retry-After,
never 500: nothing was lost, and the client is told to come back."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.storage import ObjectStore
from tests.conftest import free_port
from tests.integration.conftest import make_settings


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_every_route_answers_503_with_retry_after_while_the_database_is_away(store: ObjectStore) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/gone?connect_timeout=2"
    app = create_app(make_settings(nowhere, store))
    with TestClient(app, headers={"Authorization": "Bearer lb-anything"}) as client:
        answers = [
            client.get("/v1/batches/batch_x"),
            client.get("/v1/batches"),
            client.post("/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/completions",
                                             "completion_window": "24h"}),
            client.post("/v1/files", files={"file": ("a.jsonl", io.BytesIO(b"{}\n"))}, data={"purpose": "batch"}),
            client.get("/v1/files"),
            client.get("/admin/batches/batch_x"),
        ]  # fmt: skip
    for response in answers:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.headers["retry-after"] == "5"
        error = response.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "service_unavailable"
