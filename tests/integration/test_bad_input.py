"""A file that breaks the input format fails its batch with line-numbered errors; nothing runs."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload


def failed_batch_errors(client: TestClient, data: bytes, endpoint: str = "/v1/completions") -> list[dict]:
    batch = create_batch(client, upload(client, data)["id"], endpoint=endpoint)
    assert batch["status"] == "failed", batch
    assert batch["failed_at"] is not None
    return [(e["line"], e["message"]) for e in batch["errors"]["data"]]  # type: ignore[misc]


def test_every_bad_line_is_named_with_its_reason(client: TestClient, records: Records) -> None:
    good = json.dumps(completion_line("a", "hello")).encode()
    data = b"\n".join(
        [
            good,  # 1
            b"{not json",  # 2
            json.dumps({"prompt": "no id"}).encode(),  # 3
            json.dumps({"custom_id": "c"}).encode(),  # 4: no prompt
            json.dumps(completion_line("a", "again")).encode(),  # 5: duplicate custom_id
            json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/moderations", "body": {}}).encode(),  # 6
            b'{"custom_id": "f", "prompt": "caf\xe9"}',  # 7: not UTF-8
            json.dumps(completion_line("g", "x", temperature="hot")).encode(),  # 8
        ]
    )
    errors = failed_batch_errors(client, data)
    assert [line for line, _ in errors] == [2, 3, 4, 5, 6, 7, 8]
    reasons = dict(errors)
    assert "not valid JSON" in reasons[2]
    assert "custom_id" in reasons[3]
    assert "missing prompt" in reasons[4]
    assert "duplicate custom_id 'a' (first on line 1)" in reasons[5]
    assert "unknown url '/v1/moderations'" in reasons[6]
    assert "not valid UTF-8" in reasons[7]
    assert reasons[8].startswith("body.temperature")
    assert records.shards(client.get("/v1/batches").json()["data"][0]["id"]) == []  # nothing queued


def test_an_empty_file_fails_its_batch(client: TestClient) -> None:
    batch = create_batch(client, upload(client, b"")["id"])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "empty_file"


def test_lines_for_another_endpoint_fail_the_batch(client: TestClient) -> None:
    errors = failed_batch_errors(
        client, jsonl([{"custom_id": "a", "prompt": "x"}, completion_line("b", "y")]), endpoint="/v1/chat/completions"
    )
    assert errors == [(2, "url /v1/completions does not match the batch's endpoint /v1/chat/completions")]


def test_the_upload_keeps_the_file_whatever_its_lines(client: TestClient) -> None:
    data = b"{broken\n" + jsonl([completion_line("a", "x")])
    file = upload(client, data)
    assert file["bytes"] == len(data) and file["lines"] == 2
    assert client.get(f"/v1/files/{file['id']}/content").content == data


def test_unknown_ids_get_404_in_openai_shape(client: TestClient) -> None:
    for path in ("/v1/files/file-nope", "/v1/files/file-nope/content", "/v1/batches/batch_nope"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["code"] == "not_found"
    response = client.post("/v1/batches", json={"input_file_id": "file-nope", "endpoint": "/v1/completions"})
    assert response.status_code == 404


def test_bad_batch_requests_get_400_in_openai_shape(client: TestClient) -> None:
    file_id = upload(client, jsonl([completion_line("a", "x")]))["id"]
    cases = [
        ({"input_file_id": file_id, "endpoint": "/v1/moderations"}, "endpoint"),
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "8d"}, "completion_window"),
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "batch_size": 0}, "batch_size"),
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "model": "gpt-9"}, "model"),
    ]
    for body, param in cases:
        response = client.post("/v1/batches", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param


def test_health_answers_once_the_database_is_up_and_ready_waits_for_a_worker(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
