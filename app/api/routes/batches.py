"""Batches: create, poll, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import CallerDep, RepoDep, SettingsDep, StoreDep
from app.batch_service import create_batch
from app.finalize import finalize_batch
from app.schemas import BatchCreate, BatchList, BatchObject
from app.stats import batch_series, job_stats

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=BatchObject)
def create(body: BatchCreate, caller: CallerDep, repo: RepoDep, settings: SettingsDep) -> BatchObject:
    """Create a batch from an uploaded file; a file that breaks the format gives a failed batch."""
    return BatchObject.of(create_batch(repo, settings, body, caller))


@router.get("/{batch_id}", response_model=BatchObject)
def get(batch_id: str, caller: CallerDep, repo: RepoDep) -> BatchObject:
    """A batch's status, counts and throughput."""
    batch = repo.get_batch(batch_id, caller.scope)
    return BatchObject.of(batch, workers=repo.worker_count(batch_id))


@router.get("", response_model=BatchList)
def list_batches(
    caller: CallerDep,
    repo: RepoDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """Your batches, newest first, paged with `after`."""
    page = repo.list_batches(caller.scope, limit + 1, after)
    return BatchList.of([BatchObject.of(b) for b in page[:limit]], has_more=len(page) > limit)


@router.get("/{batch_id}/stats")
def stats(batch_id: str, caller: CallerDep, repo: RepoDep) -> dict[str, Any]:
    """Throughput of a batch: totals, rates, timings, output lengths and the per-batch series."""
    batch = repo.get_batch(batch_id, caller.scope)
    runs = repo.batch_runs(batch_id)
    return {**job_stats(batch, runs), "batches": batch_series(runs)}


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel(batch_id: str, caller: CallerDep, repo: RepoDep, store: StoreDep) -> BatchObject:
    """Cancel: the batch stops at its next static-batch boundary and keeps what it did."""
    batch, finalize_now = repo.request_cancel(batch_id, caller.scope)
    if finalize_now:  # nothing runs, so nobody else will join its files
        finalize_batch(repo, store, batch_id)
        batch = repo.get_batch(batch_id)
    return BatchObject.of(batch)
