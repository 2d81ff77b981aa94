"""Property-based fuzzing of every /v1 operation from the app's own OpenAPI schema
(schemathesis): whatever a caller with a valid key sends, the answer is never a 5xx.

`FUZZ_EXAMPLES` sets the examples per operation (30 here; `make fuzz` runs more).
Each operation runs against a fresh app and database (the `app` fixture)."""

from __future__ import annotations

import os

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


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
def test_no_v1_operation_answers_a_server_error_to_generated_requests(
    case: Case, app: FastAPI, client: TestClient
) -> None:
    response = case.call(app=StartedApp(app), headers={"Authorization": client.headers["authorization"]})
    case.validate_response(response, checks=[not_a_server_error])
