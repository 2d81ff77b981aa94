"""Uploads stream from the request into storage: the multipart body is parsed as it
arrives, every limit holds while reading, and whatever is refused leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.api.routes.files import attachment
from app.core.storage import LocalStore
from tests.helpers import completion_line, create_batch, jsonl, upload

BOUNDARY = "testboundary"


def multipart(*parts: tuple[str, str | None, bytes], closed: bool = True) -> bytes:
    """A multipart/form-data body of (name, filename, data) parts, in the order given."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


def post_form(client: TestClient, body: bytes) -> Any:
    return client.post("/v1/files", content=body, headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})


def stored_objects(store: LocalStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_a_line_longer_than_max_line_bytes_is_a_413_naming_the_line_and_leaves_nothing(
    client: TestClient, local_store: LocalStore
) -> None:
    client.app.state.settings.max_line_bytes = 1000  # type: ignore[attr-defined]
    data = jsonl([completion_line("a", "short"), completion_line("b", "x" * 2000), completion_line("c", "short")])
    response = client.post("/v1/files", files={"file": ("long.jsonl", data)}, data={"purpose": "batch"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "line_too_long"
    assert "Line 2 is longer than the limit of 1000 bytes" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert stored_objects(local_store) == []


def test_an_endless_line_is_refused_once_it_passes_the_limit(client: TestClient, local_store: LocalStore) -> None:
    client.app.state.settings.max_line_bytes = 4096  # type: ignore[attr-defined]
    response = client.post("/v1/files", files={"file": ("endless.jsonl", b"x" * (1 << 20))})
    assert response.status_code == 413
    assert "Line 1 is longer" in response.json()["error"]["message"]
    assert stored_objects(local_store) == []


def test_a_file_with_a_non_latin_name_uploads_and_downloads_with_an_rfc_6266_content_disposition(
    client: TestClient,
) -> None:
    data = jsonl([completion_line("a", "你好")])
    file = upload(client, data, filename="数据.jsonl")
    assert file["filename"] == "数据.jsonl"
    response = client.get(f"/v1/files/{file['id']}/content")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"__.jsonl\"; filename*=UTF-8''%E6%95%B0%E6%8D%AE.jsonl"
    )


def test_quotes_backslashes_and_newlines_in_a_name_cannot_break_the_header() -> None:
    assert attachment('a"b\\c\r\n.jsonl') == (
        "attachment; filename=\"a_b_c__.jsonl\"; filename*=UTF-8''a%22b%5Cc%0D%0A.jsonl"
    )


def test_purpose_may_come_before_or_after_the_file(client: TestClient) -> None:
    data = jsonl([completion_line("a", "x")])
    before = post_form(client, multipart(("purpose", None, b"batch"), ("file", "a.jsonl", data)))
    after = post_form(client, multipart(("file", "b.jsonl", data), ("purpose", None, b"batch")))
    omitted = post_form(client, multipart(("file", "c.jsonl", data)))
    for response in (before, after, omitted):
        assert response.status_code == 200, response.text
        assert response.json()["purpose"] == "batch"
        assert response.json()["lines"] == 1


def test_another_purpose_is_refused_before_or_after_the_file_and_leaves_nothing(
    client: TestClient, local_store: LocalStore
) -> None:
    data = jsonl([completion_line("a", "x")])
    for body in (
        multipart(("purpose", None, b"fine-tune"), ("file", "a.jsonl", data)),
        multipart(("file", "a.jsonl", data), ("purpose", None, b"fine-tune")),
    ):
        response = post_form(client, body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "purpose"
    assert client.get("/v1/files").json()["data"] == []
    assert stored_objects(local_store) == []


def test_a_form_without_a_file_or_not_multipart_or_cut_short_is_a_400(
    client: TestClient, local_store: LocalStore
) -> None:
    data = jsonl([completion_line("a", "x")])
    cases = [
        post_form(client, multipart(("purpose", None, b"batch"))),
        client.post("/v1/files", content=data, headers={"content-type": "application/jsonl"}),
        post_form(client, multipart(("file", "a.jsonl", data), closed=False)),
        post_form(client, b"no boundary anywhere"),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "file"
    assert client.get("/v1/files").json()["data"] == []
    assert stored_objects(local_store) == []


def test_a_name_postgres_cannot_store_is_a_400(client: TestClient) -> None:
    response = post_form(client, multipart(("file", "a\x00b.jsonl", b"{}\n")))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_lines_that_break_the_json_parser_are_line_errors_of_the_failed_batch(client: TestClient) -> None:
    good = json.dumps(completion_line("a", "x")).encode()
    data = b"\n".join(
        [
            good,  # 1
            b"[" * 100_000,  # 2: deeper than any parser goes
            b'{"custom_id": "b", "prompt": "x", "seed": ' + b"7" * 5000 + b"}",  # 3: past int max str digits
            b'{"custom_id": "c", "prompt": "x", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # 4: deep, but JSON
            b"9" * 5000,  # 5
        ]
    )
    file = upload(client, data)
    batch = create_batch(client, file["id"])
    assert batch["status"] == "failed", batch
    errors = {e["line"]: e["message"] for e in batch["errors"]["data"]}
    assert set(errors) == {2, 3, 4, 5}, errors
    assert "nested too deeply" in errors[2]
    assert "4300 digits" in errors[3]
    assert "nested too deeply" in errors[4]
    assert "4300 digits" in errors[5]


def test_fields_nobody_asked_for_are_skipped_but_not_without_limit(client: TestClient) -> None:
    data = jsonl([completion_line("a", "x")])
    small = post_form(client, multipart(("note", None, b"hello"), ("file", "a.jsonl", data)))
    assert small.status_code == 200, small.text
    huge = post_form(client, multipart(("note", None, b"x" * (1 << 20)), ("file", "a.jsonl", data)))
    assert huge.status_code == 413
