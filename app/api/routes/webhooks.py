"""Webhook endpoints: where each owner's batch events go. Admin keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.auth import Principal
from app.api.deps import CallerDep, SettingsDep
from app.api.webhook_schemas import (
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointObject,
    WebhookEndpointWithSecret,
)
from app.core.errors import Forbidden
from app.data.outbox import BATCH_EVENT_TYPES
from app.data.webhook_endpoints import WebhookEndpoints
from app.jobs.webhook_addresses import check_webhook_url

router = APIRouter(prefix="/v1/webhook_endpoints", tags=["webhooks"])


def _endpoints(request: Request, caller: Principal) -> WebhookEndpoints:
    if not caller.is_admin:
        raise Forbidden("Webhook endpoints are managed with an admin key.")
    endpoints: WebhookEndpoints = request.app.state.webhook_endpoints
    return endpoints


@router.post("", response_model=WebhookEndpointWithSecret)
def create_endpoint(
    body: WebhookEndpointCreate, request: Request, caller: CallerDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Register a URL for an owner's batch events. The answer is the only time the signing
    secret is shown (made here unless `secret` gives one). A URL whose host resolves to a
    loopback, link-local, private or multicast address is refused (400)."""
    endpoints = _endpoints(request, caller)
    check_webhook_url(body.url, settings.webhook_allow_private_addresses)
    endpoint = endpoints.create(
        owner=body.owner,
        url=body.url,
        event_types=list(body.event_types or BATCH_EVENT_TYPES),
        name=body.name,
        secret=body.secret,
    )
    return WebhookEndpointWithSecret.with_secret(endpoint)


@router.get("", response_model=WebhookEndpointList)
def list_endpoints(
    request: Request,
    caller: CallerDep,
    owner: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> WebhookEndpointList:
    """Live endpoints, newest first, paged with `after`; `owner` keeps one owner's."""
    page = _endpoints(request, caller).list(owner, limit + 1, after)
    return WebhookEndpointList.of([WebhookEndpointObject.of(e) for e in page[:limit]], has_more=len(page) > limit)


@router.get("/{endpoint_id}", response_model=WebhookEndpointObject)
def get_endpoint(endpoint_id: str, request: Request, caller: CallerDep) -> WebhookEndpointObject:
    """One endpoint (its secret is never shown again)."""
    return WebhookEndpointObject.of(_endpoints(request, caller).get(endpoint_id))


@router.delete("/{endpoint_id}", response_model=WebhookEndpointDeleted)
def delete_endpoint(endpoint_id: str, request: Request, caller: CallerDep) -> WebhookEndpointDeleted:
    """Stop sending to this endpoint: no new events, and its pending deliveries are given up."""
    _endpoints(request, caller).delete(endpoint_id)
    return WebhookEndpointDeleted(id=endpoint_id)
