"""The admin dashboard's gate: login with an admin key, sessions, CSRF, 403 for others,
nothing for a logged-out browser; and /metrics."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.admin.session import SESSION_COOKIE
from app.data.keys import create_key
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload


def login(app: FastAPI, secret: str) -> tuple[TestClient, int]:
    browser = TestClient(app, follow_redirects=False)
    form = browser.get("/admin/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = browser.post("/admin/login", data={"api_key": secret, "csrf": csrf})
    return browser, response.status_code


def test_a_logged_out_browser_is_sent_to_login_and_sees_no_data(app: FastAPI, client: TestClient) -> None:
    batch = create_batch(client, upload(client, jsonl([completion_line("secret-id", "x")]))["id"])
    browser = TestClient(app, follow_redirects=False)
    for path in ("/admin", f"/admin/batches/{batch['id']}", "/admin/throughput", "/admin/workers", "/admin/owners"):
        response = browser.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/admin/login", path
        assert batch["id"] not in response.text


def test_an_admin_logs_in_with_a_session_cookie_that_is_httponly_samesite_and_expires(
    app: FastAPI, records: Records, client: TestClient
) -> None:
    batch = create_batch(client, upload(client, jsonl([completion_line("a", "x")]))["id"])
    _, secret = create_key(records, "ops", admin=True)
    browser, status = login(app, secret)
    assert status == 303
    cookie = next(c for c in browser.cookies.jar if c.name == SESSION_COOKIE)
    assert cookie.expires is not None
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "strict"
    jobs = browser.get("/admin")
    assert jobs.status_code == 200 and batch["id"] in jobs.text and "alice" in jobs.text


def test_login_without_the_csrf_token_is_refused(app: FastAPI, records: Records) -> None:
    _, secret = create_key(records, "ops", admin=True)
    browser = TestClient(app, follow_redirects=False)
    browser.get("/admin/login")
    assert browser.post("/admin/login", data={"api_key": secret, "csrf": "forged"}).status_code == 403


def test_a_non_admin_key_gets_403(app: FastAPI, records: Records) -> None:
    _, secret = create_key(records, "alice")
    _, status = login(app, secret)
    assert status == 403
    bearer = TestClient(app, headers={"Authorization": f"Bearer {secret}"}, follow_redirects=False)
    assert bearer.get("/admin").status_code == 403


def test_logout_needs_the_csrf_token_and_ends_the_session(app: FastAPI, records: Records) -> None:
    _, secret = create_key(records, "ops", admin=True)
    browser, _ = login(app, secret)
    page = browser.get("/admin/workers")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert browser.post("/admin/logout", data={"csrf": "wrong"}).status_code == 403
    assert browser.post("/admin/logout", data={"csrf": csrf}).status_code == 303
    assert browser.get("/admin").status_code == 303


def test_metrics_in_prometheus_text_format(client: TestClient) -> None:
    create_batch(client, upload(client, jsonl([completion_line(f"r{i}", "x") for i in range(7)]))["id"])
    text = client.get("/metrics").text
    assert 'llm_batch_jobs{status="queued"} 1.0' in text
    assert "llm_batch_queue_depth_lines 7.0" in text
    assert "# TYPE llm_batch_window_seconds histogram" in text


@pytest.mark.parametrize("path", ["/admin/batches/%00", "/admin/files/%00/content", "/admin?owner=%00"])
def test_ids_and_query_values_postgres_cannot_store_are_refused_with_400(
    app: FastAPI, records: Records, path: str
) -> None:
    _, secret = create_key(records, "ops", admin=True)
    admin = TestClient(app, headers={"Authorization": f"Bearer {secret}"}, follow_redirects=False)
    response = admin.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_value" and "NUL" in response.json()["error"]["message"]
