"""Builds the FastAPI app: `uvicorn --factory app.api.main:create_app`."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.admin.routes import install_admin
from app.api.admin.session import SessionSigner
from app.api.auth import KeyCache
from app.api.batch_views import BatchViews
from app.api.errors import install_error_handlers
from app.api.heavy_work import HeavyWork
from app.api.limits import RequestGate
from app.api.rate_limits import RateLimiter
from app.api.request_ids import RequestIds
from app.api.routes import api_router
from app.api.status_changes import StatusChanges
from app.core.database import Database
from app.core.embedded_postgres import database_url
from app.core.settings import Settings, get_settings
from app.core.storage import open_store
from app.data.outbox import Outbox
from app.data.queue import JobQueue
from app.data.records import Records
from app.data.uploads import Uploads
from app.data.webhook_endpoints import WebhookEndpoints
from app.jobs.sweeper import Sweeper
from app.jobs.webhooks import WebhookSender


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    url = database_url(settings)  # DATABASE_URL, else the embedded server under var/

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(url)
        app.state.settings = settings
        app.state.records = Records(db)
        app.state.queue = JobQueue(db)
        app.state.uploads = Uploads(db)
        status_changes = StatusChanges(url)
        app.state.batch_views = BatchViews(app.state.records, settings.gpu_hour_price, status_changes)
        app.state.key_cache = KeyCache(settings.key_cache_seconds)
        app.state.rate_limiter = RateLimiter(settings.rate_limit_requests_per_minute)
        app.state.store = open_store(settings.resolved_storage_url, settings.s3_endpoint_url, settings.s3_region)
        app.state.session_signer = SessionSigner(settings.session_secret or secrets.token_urlsafe(32))
        sweeper = Sweeper(
            app.state.records,
            app.state.queue,
            app.state.store,
            interval_seconds=settings.sweep_seconds,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_batch_attempts,
            gpu_hour_price=settings.gpu_hour_price,
            temporary_object_max_age_seconds=settings.temporary_object_max_age_seconds,
        )
        app.state.sweeper = sweeper
        # The tokenizing process reaches this app's database by the URL resolved here.
        app.state.heavy_work = HeavyWork(settings.heavy_work_threads, settings.model_copy(update={"database_url": url}))
        app.state.model_files = app.state.heavy_work.preload_model_files()
        sweeper.start()
        app.state.webhook_endpoints = WebhookEndpoints(db)
        app.state.webhook_sender = webhook_sender = WebhookSender.from_settings(Outbox(db), settings)
        webhook_sender.start()
        yield
        webhook_sender.stop()
        sweeper.stop()
        status_changes.stop()
        app.state.heavy_work.shutdown()
        db.dispose()

    app = FastAPI(
        title="llm-batch",
        version="0.1.0",
        summary="Offline batch inference: upload JSONL, run it in static batches on vLLM, download results.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestGate)  # inside RequestIds: its refusals carry the request id too
    app.add_middleware(RequestIds)
    app.include_router(api_router)
    install_admin(app)
    return app
