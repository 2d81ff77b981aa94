"""The openai SDK's own webhook calls work against this API, served over real HTTP:
`client.webhooks.create/retrieve/list/delete` with an admin key, and `unwrap` on what
the registered endpoint receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import openai
import pytest
import uvicorn

from app.api.main import create_app
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from tests.conftest import free_port
from tests.integration.conftest import make_settings
from tests.receiver import Receiver

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, webhook_poll_seconds=0.05, webhook_first_retry_seconds=0.2)


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """The API under uvicorn on a free port, in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=20)


def test_the_openai_sdk_manages_endpoints_with_an_admin_key_and_unwraps_what_they_receive(
    base_url: str, records: Records
) -> None:
    admin = openai.OpenAI(base_url=base_url, api_key=create_key(records, "ops", admin=True)[1], max_retries=0)
    alice = openai.OpenAI(base_url=base_url, api_key=create_key(records, "alice")[1], max_retries=0)
    receiver = Receiver().start()
    try:
        created = admin.webhooks.create(
            url=receiver.url, name="alice's batches", event_types=["batch.failed"], extra_body={"owner": "alice"}
        )
        assert created.signing_secret.startswith("whsec_") and created.event_types == ["batch.failed"]
        assert admin.webhooks.retrieve(created.id).url == receiver.url
        assert [e.id for e in admin.webhooks.list()] == [created.id]
        with pytest.raises(openai.PermissionDeniedError):
            alice.webhooks.list()

        source = alice.files.create(file=("bad.jsonl", b"{not json\n"), purpose="batch")
        batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
        assert batch.status == "failed"
        [got] = receiver.wait_for(1)
        event = openai.OpenAI(api_key="x", webhook_secret=created.signing_secret).webhooks.unwrap(got.body, got.headers)
        assert event.type == "batch.failed" and event.data.id == batch.id

        assert admin.webhooks.delete(created.id).deleted
        assert list(admin.webhooks.list()) == []
    finally:
        receiver.stop()
