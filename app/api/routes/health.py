"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import RecordsDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(records: RecordsDep) -> JSONResponse:
    """200 when the API and its database answer."""
    try:
        with records.db.session() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means "not healthy"
        return JSONResponse({"status": "database unavailable", "detail": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(request: Request, records: RecordsDep, settings: SettingsDep) -> JSONResponse:
    """200 when at least one worker has its model loaded and heartbeats. `model_files`
    says whether the API has loaded the models' tokenizers (it does so at start-up, in
    the background; until then an estimate waits for them)."""
    workers = records.ready_workers(stale_after_seconds=settings.lease_seconds)
    body = {
        "workers": [{"id": w.id, "model": w.model, "host": w.host} for w in workers],
        "model_files": "loaded" if request.app.state.model_files.done() else "loading",
    }
    return JSONResponse(
        {"status": "ready" if workers else "no worker ready", **body}, status_code=200 if workers else 503
    )
