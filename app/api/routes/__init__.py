"""Gathers the routers."""

from fastapi import APIRouter

from app.api.routes import batches, files, health, metrics, webhooks

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(files.router)
api_router.include_router(batches.router)
api_router.include_router(metrics.router)
api_router.include_router(webhooks.router)
