"""Request rates per API key (app.api.rate_limits): OpenAI's x-ratelimit-* headers on every
answer, a 429 in OpenAI's shape with Retry-After past the rate, the SDK's own retry going
through after it, and one key's burst leaving another key's requests alone."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI

from app.api.rate_limits import RateLimiter
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.keys import create_key
from app.data.records import Records
from tests.integration.conftest import client_for, make_settings

PER_MINUTE = 60  # one a second: Retry-After is 1 s


@pytest.fixture
def settings(database_url: str, store: ObjectStore) -> Settings:
    return make_settings(database_url, store, rate_limit_requests_per_minute=PER_MINUTE)


def test_a_key_past_its_rate_gets_429_with_retry_after_and_another_key_does_not(app: FastAPI, records: Records) -> None:
    app.state.rate_limiter.clock = lambda: 0.0  # no refill while the burst is sent, however slow the machine
    alice, bob = client_for(app, records, "alice"), client_for(app, records, "bob")
    first = alice.get("/v1/batches")
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == str(PER_MINUTE)
    assert first.headers["x-ratelimit-remaining-requests"] == str(PER_MINUTE - 1)
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    answers = [alice.get("/v1/batches") for _ in range(PER_MINUTE)]
    refused = answers[-1]
    assert [a.status_code for a in answers[:-1]] == [200] * (PER_MINUTE - 1)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and refused.json()["error"]["type"] == "requests"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    theirs = bob.get("/v1/batches")  # another key's bucket is its own
    assert theirs.status_code == 200 and theirs.headers["x-ratelimit-remaining-requests"] == str(PER_MINUTE - 1)


def test_the_sdks_own_retry_goes_through_after_retry_after(app: FastAPI, records: Records) -> None:
    _, secret = create_key(records, "carol")
    sdk = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=TestClient(app), max_retries=2)
    limited = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    while limited.get("/v1/batches").status_code != 429:  # spend the bucket
        pass
    assert sdk.batches.list().data == []  # refused once, retried after Retry-After, answered


def test_the_bucket_refills_and_unlimited_means_no_headers() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        allowance = limiter.take("k")
        assert allowance is not None and allowance.retry_after_seconds is None
    refused = limiter.take("k")
    assert refused is not None and refused.retry_after_seconds == 1
    now[0] += 1.0
    again = limiter.take("k")
    assert again is not None and again.retry_after_seconds is None
    assert RateLimiter(0).take("k") is None
