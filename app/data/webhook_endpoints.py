"""Webhook endpoints: where an owner's batch events go, and the secret that signs them.

The secret is stored as it is (it must sign every delivery, so a hash would not do) and
shown only in the answer that creates the endpoint. Secrets are in the Standard Webhooks
format OpenAI uses: `whsec_` + base64 of the key's bytes.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from sqlalchemy import select, update

from app.core.database import Database
from app.core.errors import InvalidRequest, NotFound
from app.data.ids import new_id, now
from app.data.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64  # what Standard Webhooks allows


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; InvalidRequest if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidRequest(f"A signing secret starts with {SECRET_PREFIX!r}.", param="secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"A signing secret is {SECRET_PREFIX!r} + base64.", param="secret") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidRequest(
            f"A signing secret's key is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes; this one is {len(key)}.",
            param="secret",
        )
    return key


def secret_hint(secret: str) -> str:
    """Enough of the secret to tell two apart, never enough to sign."""
    return secret[: len(SECRET_PREFIX) + 4] + "…" + secret[-4:]


class WebhookEndpoints:
    """Create, list and delete endpoints (admins only, checked by the API)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, owner: str, url: str, event_types: list[str], name: str = "", secret: str | None = None
    ) -> WebhookEndpoint:
        secret = secret or new_secret()
        secret_key(secret)
        endpoint = WebhookEndpoint(
            id=new_id("whep_"), owner=owner, url=url, name=name, secret=secret, event_types=event_types
        )
        with self.db.session() as session:
            session.add(endpoint)
            session.flush()
            session.refresh(endpoint)
        return endpoint

    def get(self, endpoint_id: str) -> WebhookEndpoint:
        with self.db.session() as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            if endpoint is None or endpoint.deleted_at is not None:
                raise NotFound("webhook endpoint", endpoint_id)
            return endpoint

    def list(self, owner: str | None, limit: int, after: str | None = None) -> list[WebhookEndpoint]:
        """Live endpoints, newest first; `after` is the last id of the previous page."""
        with self.db.session() as session:
            query = select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))
            if owner is not None:
                query = query.where(WebhookEndpoint.owner == owner)
            if after is not None:
                anchor = self.get(after)
                query = query.where(
                    (WebhookEndpoint.created_at < anchor.created_at)
                    | ((WebhookEndpoint.created_at == anchor.created_at) & (WebhookEndpoint.id < anchor.id))
                )
            query = query.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc()).limit(limit)
            return list(session.scalars(query))

    def delete(self, endpoint_id: str) -> None:
        """Stops the endpoint's events: it gets no new ones, and its pending deliveries are
        given up. Its delivery history stays."""
        with self.db.session() as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
            if endpoint is None or endpoint.deleted_at is not None:
                raise NotFound("webhook endpoint", endpoint_id)
            endpoint.deleted_at = now()
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.PENDING)
                .values(status=DeliveryStatus.FAILED, failed_at=now(), last_error="endpoint deleted")
            )
