"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import prometheus as metrics
from app.api.deps import RecordsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(records: RecordsDep) -> Response:
    """Tokens, static batches, batch seconds per worker; jobs by status; queue depth."""
    return Response(await run_in_threadpool(metrics.render, records), media_type=CONTENT_TYPE_LATEST)
