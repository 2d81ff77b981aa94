"""The webhook endpoint shapes: OpenAI's `webhook_endpoint` objects, plus the owner whose
events they get."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field

from app.api.schemas import Page, unix
from app.data.models import WebhookEndpoint
from app.data.webhook_endpoints import secret_hint

BatchEventType = Literal["batch.completed", "batch.failed", "batch.cancelled", "batch.expired"]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL")
    return value


class WebhookEndpointCreate(BaseModel):
    url: Annotated[
        str, Field(max_length=2048, description="receives the events as signed POSTs"), AfterValidator(_http_url)
    ]
    owner: str = Field(min_length=1, max_length=128, description="whose batches' events this endpoint receives")
    secret: str | None = Field(
        default=None, description="whsec_ + base64 of 24 to 64 bytes; unset: one is made and returned once"
    )
    event_types: list[BatchEventType] | None = Field(
        default=None, min_length=1, description="the events to send; unset: all four batch events"
    )
    name: str = Field(default="", max_length=256)


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    url: str
    name: str
    event_types: list[str]
    signing_secret_hint: str
    owner: str = Field(description="whose batches' events this endpoint receives")

    @classmethod
    def fields_of(cls, endpoint: WebhookEndpoint) -> dict[str, Any]:
        created = unix(endpoint.created_at) or 0
        return {
            "id": endpoint.id,
            "created_at": created,
            "updated_at": created,
            "url": endpoint.url,
            "name": endpoint.name,
            "event_types": endpoint.event_types,
            "signing_secret_hint": secret_hint(endpoint.secret),
            "owner": endpoint.owner,
        }

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointObject:
        return cls(**cls.fields_of(endpoint))


class WebhookEndpointWithSecret(WebhookEndpointObject):
    """The answer to a create: the only time the signing secret is shown."""

    signing_secret: str

    @classmethod
    def with_secret(cls, endpoint: WebhookEndpoint) -> WebhookEndpointWithSecret:
        return cls(**cls.fields_of(endpoint), signing_secret=endpoint.secret)


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointList(Page):
    data: list[WebhookEndpointObject]

    @classmethod
    def of(cls, data: list[WebhookEndpointObject], has_more: bool) -> WebhookEndpointList:
        return cls(
            data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
        )
