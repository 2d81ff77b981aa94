"""Hostile input costs only its sender: no body is read before the caller is known and
its size allowed, and every refusal, even an unexpected failure, is an error in
OpenAI's shape."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.data.records import Records
from tests.helpers import completion_line, jsonl, upload


def assert_openai_error(response: Any, status: int, code: str | None = None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def call_without_reading_the_body(
    app: FastAPI, headers: list[tuple[bytes, bytes]], path: str = "/v1/batches"
) -> list[dict[str, Any]]:
    """Calls the app as a server would, with a body it must never ask for."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the app read the body")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"314572800"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    return sent


def test_a_request_without_a_key_is_refused_with_401_before_a_byte_of_its_body_is_read(app: FastAPI) -> None:
    sent = call_without_reading_the_body(app, [])
    assert sent[0]["status"] == 401
    assert b'"code":"invalid_api_key"' in sent[1]["body"]


def test_a_request_with_a_wrong_key_is_refused_with_401_before_its_body_is_read(app: FastAPI) -> None:
    sent = call_without_reading_the_body(app, [(b"authorization", b"Bearer lb-not-a-key")])
    assert sent[0]["status"] == 401
    assert b"Incorrect or revoked API key" in sent[1]["body"]


def test_a_known_caller_with_a_body_over_the_cap_gets_413_before_it_is_read(app: FastAPI, client: TestClient) -> None:
    key = client.headers["authorization"].encode()
    sent = call_without_reading_the_body(app, [(b"authorization", key)])
    assert sent[0]["status"] == 413
    assert b'"code":"request_too_large"' in sent[1]["body"]


def test_an_oversized_form_to_the_dashboard_login_gets_413_before_it_is_read(app: FastAPI) -> None:
    sent = call_without_reading_the_body(app, [], path="/admin/login")
    assert sent[0]["status"] == 413


def test_a_key_postgres_could_not_store_is_a_400_before_anything_else(app: FastAPI) -> None:
    sent = call_without_reading_the_body(app, [(b"authorization", b"Bearer lb-\x00")])
    assert sent[0]["status"] == 400
    assert b'"param":"authorization"' in sent[1]["body"]


def test_missing_and_wrong_keys_get_401_in_openai_shape(app: FastAPI) -> None:
    anonymous = TestClient(app)
    assert_openai_error(anonymous.get("/v1/batches"), 401, "invalid_api_key")
    assert_openai_error(anonymous.post("/v1/batches", json={}), 401, "invalid_api_key")
    wrong = TestClient(app, headers={"Authorization": "Bearer lb-nope"})
    assert_openai_error(wrong.get("/v1/files"), 401, "invalid_api_key")
    basic = TestClient(app, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_openai_error(basic.get("/v1/files"), 401, "invalid_api_key")


def test_health_docs_and_metrics_need_no_key_as_before(app: FastAPI) -> None:
    anonymous = TestClient(app)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/metrics").status_code == 200


def test_an_authenticated_json_body_over_the_cap_gets_413(client: TestClient) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    settings.max_json_body_bytes = 1000
    body = b'{"input_file_id": "' + b"x" * 2000 + b'", "endpoint": "/v1/completions"}'
    response = client.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")
    assert "1000 bytes" in response.json()["error"]["message"]


def test_a_chunked_json_body_is_counted_as_it_streams_and_refused_past_the_cap(client: TestClient) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    settings.max_json_body_bytes = 1000

    def chunks() -> Iterator[bytes]:
        yield b'{"input_file_id": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'", "endpoint": "/v1/completions"}'

    response = client.post("/v1/batches", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")


def test_a_body_under_the_cap_still_works(client: TestClient) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    settings.max_json_body_bytes = 1000
    file_id = upload(client, jsonl([completion_line("a", "x")] * 1))["id"]
    response = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"})
    assert response.status_code == 200, response.text


def test_an_unknown_path_gets_404_in_openai_shape(client: TestClient) -> None:
    response = client.get("/v1/nope")
    assert_openai_error(response, 404, "not_found")
    assert "GET /v1/nope" in response.json()["error"]["message"]


def test_a_method_the_path_does_not_take_gets_405_in_openai_shape(client: TestClient) -> None:
    response = client.delete("/v1/batches")
    assert_openai_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]  # Starlette names the methods of the first route on the path


def test_an_unexpected_exception_is_a_500_in_openai_shape_with_a_request_id_and_no_traceback(
    app: FastAPI, records: Records, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret detail of the failure")

    app.add_api_route("/v1/explode", explode)  # test-only route, on this app instance
    quiet = TestClient(app, raise_server_exceptions=False, headers=dict(client.headers))
    with caplog.at_level(logging.ERROR, logger="app.api.errors"):
        response = quiet.get("/v1/explode")
    assert_openai_error(response, 500, "internal_error")
    request_id = response.headers["x-request-id"]
    assert response.json()["error"]["message"] == f"Internal server error (request id {request_id})."
    assert "secret detail" not in response.text and "Traceback" not in response.text
    assert any(request_id in record.getMessage() for record in caplog.records)


def test_every_answer_carries_a_request_id(client: TestClient, app: FastAPI) -> None:
    ids = {
        client.get("/v1/batches").headers["x-request-id"],
        client.get("/v1/nope").headers["x-request-id"],
        TestClient(app).get("/v1/files").headers["x-request-id"],
        client.get("/healthz").headers["x-request-id"],
    }
    assert len(ids) == 4


def test_every_answer_says_how_long_the_app_took(client: TestClient, app: FastAPI) -> None:
    """`Server-Timing: app;dur=<ms>`: a client tells a slow server from a slow path to it."""
    for response in (client.get("/v1/batches"), client.get("/v1/nope"), TestClient(app).get("/v1/files")):
        name, _, duration = response.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0 <= float(duration) < 60_000, response.headers["server-timing"]


def test_a_nul_in_a_query_parameter_is_a_400_naming_it(client: TestClient) -> None:
    assert_openai_error(client.get("/v1/batches", params={"after": "batch_\x00"}), 400, "invalid_value", "after")
    assert_openai_error(client.get("/v1/files", params={"purpose": "\x00"}), 400, "invalid_value", "purpose")


def test_a_nul_in_a_path_id_is_a_400_naming_it(client: TestClient) -> None:
    assert_openai_error(client.get("/v1/files/file-%00x"), 400, "invalid_value", "file_id")
    assert_openai_error(client.post("/v1/batches/batch_%00/cancel"), 400, "invalid_value", "batch_id")


def test_a_nul_in_metadata_is_a_400_naming_it(client: TestClient) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    for metadata in ({"team": "a\x00b"}, {"te\x00am": "a"}):
        response = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "metadata": metadata}
        )
        assert_openai_error(response, 400, "invalid_value", "metadata")
    retry = client.post("/v1/batches/batch_x/retry", json={"metadata": {"k": "\x00"}})
    assert_openai_error(retry, 400, "invalid_value", "metadata")


def test_nul_and_lone_surrogates_in_json_strings_are_400s_naming_the_field(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    cases = [
        (b'{"input_file_id": "file-\\u0000", "endpoint": "/v1/completions"}', "input_file_id"),
        (b'{"input_file_id": "\\ud800", "endpoint": "/v1/completions"}', "input_file_id"),
        (b'{"input_file_id": "f", "endpoint": "/v1/completions", "model": "\\udfff"}', "model"),
        (b'{"input_file_id": "f", "endpoint": "/v1/completions", "metadata": {"\\ud800": "v"}}', "metadata"),
    ]
    for body, param in cases:
        response = client.post("/v1/batches", content=body, headers=headers)
        assert_openai_error(response, 400, "invalid_value", param)


def test_json_the_parser_cannot_take_is_a_400_not_a_500(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for body in (b"[" * 100_000, b'{"priority": ' + b"9" * 5000 + b"}", b"{nope"):
        assert_openai_error(client.post("/v1/batches", content=body, headers=headers), 400)
    assert_openai_error(client.post("/v1/batches", content=b"{nope", headers=headers), 400, "invalid_json")
