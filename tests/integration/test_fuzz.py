"""Property-based fuzzing of every /v1 operation from the app's own OpenAPI schema
(schemathesis): whatever a caller with a valid key sends, the answer is never a 5xx.

`FUZZ_EXAMPLES` sets the examples per operation (30 here; `make fuzz` runs more).
Each operation runs against a fresh app and database (the `app` fixture)."""

from __future__ import annotations

import contextlib
import os
import zlib

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.main import create_app
from app.core.settings import Settings
from tests.conftest import DEMO_MODEL
from tests.helpers import completion_line, create_batch, jsonl, upload

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))

# The schema is the app's own; building it needs no database (nothing connects before the lifespan).
_schema_only = create_app(Settings(database_url="postgresql://schema-only/none", model=str(DEMO_MODEL)))
schema = schemathesis.openapi.from_dict(_schema_only.openapi()).include(path_regex="^/v1/")


class StartedApp:
    """The app whose lifespan the `app` fixture already runs: schemathesis' client would
    start another one, so its lifespan messages are answered here and go no further."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


@pytest.fixture
def known_ids(client: TestClient) -> dict[str, str]:
    """Objects that exist: a file, a queued batch and an ended one (cancelled while queued)."""
    file = upload(client, jsonl([completion_line("a", "x"), {"custom_id": "b", "prompt": "y"}]))
    queued = create_batch(client, file["id"])
    ended = create_batch(client, file["id"])
    assert client.post(f"/v1/batches/{ended['id']}/cancel").status_code == 200
    return {"file_id": file["id"], "queued_batch_id": queued["id"], "ended_batch_id": ended["id"]}


LONGEST_WAIT = 0.2  # seconds a fuzzed long poll may hold


def aim_at_known_objects(case: Case, known: dict[str, str]) -> None:
    """Half the examples name objects that exist, so fuzzing reaches past the 404. The
    choice is a hash of the example, so a failing example replays the same way."""
    pick = zlib.crc32(repr((case.method, case.path_parameters, case.query, case.body)).encode())
    if isinstance(case.query, dict) and "wait" in case.query:
        with contextlib.suppress(TypeError, ValueError):  # a value that is no number stays, to be refused
            if float(case.query["wait"]) > LONGEST_WAIT:
                case.query["wait"] = LONGEST_WAIT  # a long poll of a queued batch holds that long
    if pick % 2:
        return
    batch_id = known["queued_batch_id"] if pick % 4 else known["ended_batch_id"]
    ids = {"file_id": known["file_id"], "batch_id": batch_id}
    for name in case.path_parameters or {}:
        if name in ids:
            case.path_parameters[name] = ids[name]  # type: ignore[index]
    if isinstance(case.body, dict) and "input_file_id" in case.body:
        case.body["input_file_id"] = known["file_id"]
        case.body["endpoint"] = "/v1/completions"
    if isinstance(case.query, dict) and isinstance(case.query.get("after"), str):
        case.query["after"] = known["file_id"] if case.path == "/v1/files" else batch_id


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
def test_no_v1_operation_answers_a_server_error_to_generated_requests(
    case: Case, app: FastAPI, client: TestClient, known_ids: dict[str, str]
) -> None:
    aim_at_known_objects(case, known_ids)
    response = case.call(app=StartedApp(app), headers={"Authorization": client.headers["authorization"]})
    case.validate_response(response, checks=[not_a_server_error])
