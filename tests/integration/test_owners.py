"""Every file and batch belongs to its key's owner; others get 404, admins see all."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload


def test_another_owner_gets_404_never_the_data(client: TestClient, other_client: TestClient) -> None:
    file = upload(client, jsonl([completion_line("a", "secret prompt")]))
    batch = create_batch(client, file["id"])
    for path in (f"/v1/files/{file['id']}", f"/v1/files/{file['id']}/content", f"/v1/batches/{batch['id']}"):
        response = other_client.get(path)
        assert response.status_code == 404, path
        assert "secret" not in response.text
    assert other_client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
    assert other_client.delete(f"/v1/files/{file['id']}").status_code == 404
    refused = other_client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/completions"})
    assert refused.status_code == 404
    assert other_client.get("/v1/files").json()["data"] == []
    assert other_client.get("/v1/batches").json()["data"] == []


def test_an_admin_sees_every_owners_work(
    client: TestClient, other_client: TestClient, admin_client: TestClient
) -> None:
    mine = create_batch(client, upload(client, jsonl([completion_line("a", "x")]))["id"])
    theirs = create_batch(other_client, upload(other_client, jsonl([completion_line("b", "y")]))["id"])
    listed = {b["id"] for b in admin_client.get("/v1/batches").json()["data"]}
    assert {mine["id"], theirs["id"]} <= listed
    assert admin_client.get(f"/v1/batches/{theirs['id']}").status_code == 200


def test_requests_without_a_valid_key_get_401(app, records: Records) -> None:  # type: ignore[no-untyped-def]
    anonymous = TestClient(app)
    response = anonymous.get("/v1/batches")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = TestClient(app, headers={"Authorization": "Bearer lb-not-a-key"})
    assert wrong.get("/v1/files").status_code == 401


def test_a_revoked_key_stops_working_once_the_key_cache_forgets_it(settings: Settings, records: Records) -> None:
    import time

    from app.api.main import create_app
    from app.data.keys import create_key

    key, secret = create_key(records, "carol")
    with TestClient(
        create_app(settings.model_copy(update={"key_cache_seconds": 1.0})),
        headers={"Authorization": f"Bearer {secret}"},
    ) as carol:
        assert carol.get("/v1/batches").status_code == 200
        assert records.revoke_key(key.prefix) == 1
        assert carol.get("/v1/batches").status_code == 200  # still trusted from the cache
        time.sleep(1.1)
        assert carol.get("/v1/batches").status_code == 401


def test_keys_are_stored_as_hashes(records: Records) -> None:
    from sqlalchemy import text

    from app.data.keys import create_key

    _, secret = create_key(records, "dave")
    with records.db.session() as session:
        stored = session.execute(text("SELECT key_hash, prefix FROM api_keys WHERE owner = 'dave'")).one()
    assert secret not in stored.key_hash and len(stored.key_hash) == 64
    assert secret.startswith(stored.prefix) and len(stored.prefix) < len(secret) / 3
