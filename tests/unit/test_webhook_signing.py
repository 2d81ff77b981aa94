"""Webhook signing and event shapes, checked against the openai SDK's own verifier and types."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import openai
import pytest
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchFailedWebhookEvent,
)

from app.core.backoff import Backoff
from app.core.errors import InvalidRequest
from app.data.models import JobStatus
from app.data.outbox import EVENT_TYPES, event_payload
from app.data.webhook_endpoints import new_secret, secret_hint, secret_key
from app.jobs.webhooks import signature, signed_headers

SDK_TYPES = {
    JobStatus.COMPLETED: BatchCompletedWebhookEvent,
    JobStatus.FAILED: BatchFailedWebhookEvent,
    JobStatus.CANCELLED: BatchCancelledWebhookEvent,
    JobStatus.EXPIRED: BatchExpiredWebhookEvent,
}


def test_the_standard_webhooks_example_signature_is_reproduced() -> None:
    # The example in the Standard Webhooks specification (and Svix's docs).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert (
        signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize("status", list(EVENT_TYPES))
def test_each_event_is_openais_shape_and_the_sdk_unwraps_it_with_the_secret(status: JobStatus) -> None:
    secret = new_secret()
    body = event_payload("evt_1", EVENT_TYPES[status], "batch_abc", datetime(2025, 1, 2, tzinfo=UTC))
    event = json.loads(body)
    assert event == {
        "id": "evt_1",
        "object": "event",
        "created_at": 1735776000,
        "type": EVENT_TYPES[status],
        "data": {"id": "batch_abc"},
    }
    assert SDK_TYPES[status].model_validate(event).data.id == "batch_abc"

    unwrapped = openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.unwrap(
        body, signed_headers(secret, "evt_1", body)
    )
    assert isinstance(unwrapped, SDK_TYPES[status])
    assert unwrapped.type == EVENT_TYPES[status] and unwrapped.data.id == "batch_abc"


def test_the_sdk_refuses_a_changed_body_another_secret_and_a_stale_timestamp() -> None:
    secret, body = new_secret(), event_payload("evt_1", "batch.completed", "batch_abc", datetime.now(UTC))
    webhooks = openai.OpenAI(api_key="x", webhook_secret=secret).webhooks
    headers = signed_headers(secret, "evt_1", body)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.unwrap(body.replace("batch_abc", "batch_xyz"), headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.unwrap(body, signed_headers(new_secret(), "evt_1", body))
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.unwrap(body, signed_headers(secret, "evt_1", body, timestamp=int(time.time()) - 3600))


def test_a_made_secret_is_whsec_and_32_random_bytes_and_a_bad_one_is_refused() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert secret_key(secret) == base64.b64decode(secret[6:]) and new_secret() != secret
    assert secret_hint(secret).startswith("whsec_") and secret[10:-4] not in secret_hint(secret)
    for bad in ("plain-password", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidRequest):
            secret_key(bad)


def test_retries_wait_the_first_delay_then_double_up_to_the_cap() -> None:
    assert [Backoff.after(n, 5, 3600) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert Backoff.after(11, 5, 3600) == 3600 and Backoff.after(10_000, 5, 3600) == 3600
    assert Backoff.after(3, 0.2, 0.5) == 0.5
