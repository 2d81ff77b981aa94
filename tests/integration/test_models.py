"""`GET /v1/models` lists what ready workers serve now, with every LoRA adapter of the
generation model, in OpenAI's `model` shape that the official SDK reads unchanged; a worker
that stopped heartbeating, or is still loading, takes its model off the list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai import NotFoundError, OpenAI

from app.api.main import create_app
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.models import Worker
from app.data.records import Records
from app.jobs.endpoints import worker_kinds
from tests.integration.conftest import make_settings


def worker(worker_id: str, model: str, status: str = "ready", age_seconds: float = 0) -> Worker:
    beat = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return Worker(
        id=worker_id, host="h", pid=1, model=model, tensor_parallel_size=1, status=status,
        started_at=beat, heartbeat_at=beat,
    )  # fmt: skip


def test_models_lists_what_ready_workers_serve_and_the_sdk_reads_it(
    database_url: str, store: ObjectStore, records: Records, demo_lora: Path
) -> None:
    settings = make_settings(database_url, store, lora_modules={"tuned": str(demo_lora)})
    for row in (
        worker("g1", "demo-llama"),
        worker("g2", "demo-llama"),
        worker("e1", "demo-embed"),
        worker("loading", "other-model", status="loading"),
        worker("gone", "stale-model", age_seconds=3600),  # no heartbeat for an hour
    ):
        records.register_worker(row)
    app = create_app(settings)
    with TestClient(app) as http:
        _, secret = create_key(records, "alice")
        sdk = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=http, max_retries=0)

        models = {model.id: model for model in sdk.models.list()}
        assert list(models) == ["demo-embed", "demo-llama", "tuned"]
        assert all(m.object == "model" and m.owned_by == "llm-batch" and m.created > 0 for m in models.values())
        extras = {name: model.model_extra for name, model in models.items()}
        assert extras["demo-llama"] == {
            "kind": "generate", "endpoints": worker_kinds()["generate"], "ready_workers": 2, "parent": None,
        }  # fmt: skip
        assert extras["demo-embed"] == {
            "kind": "embed", "endpoints": worker_kinds()["embed"], "ready_workers": 1, "parent": None,
        }  # fmt: skip
        assert extras["tuned"] is not None and extras["tuned"]["parent"] == "demo-llama"
        assert extras["tuned"]["kind"] == "lora"

        assert sdk.models.retrieve("demo-embed").id == "demo-embed"
        with pytest.raises(NotFoundError) as missing:
            sdk.models.retrieve("stale-model")
        assert missing.value.body["code"] == "not_found"  # type: ignore[index]
        assert http.get("/v1/models").status_code == 401  # no key, no list


def test_with_no_ready_worker_the_list_is_empty(client: TestClient) -> None:
    assert client.get("/v1/models").json() == {"object": "list", "data": []}
