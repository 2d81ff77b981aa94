"""Gathers the routers."""

from fastapi import APIRouter, Depends

from app.api.deps import refuse_unstorable_params
from app.api.routes import batches, files, health, limits, metrics, models, uploads, webhooks

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(files.router, dependencies=[Depends(refuse_unstorable_params)])
api_router.include_router(uploads.router, dependencies=[Depends(refuse_unstorable_params)])
api_router.include_router(batches.router, dependencies=[Depends(refuse_unstorable_params)])
api_router.include_router(metrics.router)
api_router.include_router(webhooks.router, dependencies=[Depends(refuse_unstorable_params)])
api_router.include_router(models.router, dependencies=[Depends(refuse_unstorable_params)])
api_router.include_router(limits.router, dependencies=[Depends(refuse_unstorable_params)])
