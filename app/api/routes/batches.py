"""Batches: create, poll, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import RepoDep, SettingsDep
from app.batch_service import create_batch
from app.schemas import BatchCreate, BatchObject

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=BatchObject)
def create(body: BatchCreate, repo: RepoDep, settings: SettingsDep) -> BatchObject:
    """Create a batch from an uploaded file; a file that breaks the format gives a failed batch."""
    return BatchObject.of(create_batch(repo, settings, body))


@router.get("/{batch_id}", response_model=BatchObject)
def get(batch_id: str, repo: RepoDep) -> BatchObject:
    """A batch's status, counts and throughput."""
    return BatchObject.of(repo.get_batch(batch_id))


@router.get("")
def list_batches(
    repo: RepoDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, object]:
    """Batches, newest first, paged with `after`."""
    page = repo.list_batches(limit + 1, after)
    data = [BatchObject.of(b) for b in page[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
        "has_more": len(page) > limit,
    }


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel(batch_id: str, repo: RepoDep) -> BatchObject:
    """Cancel: the batch stops at its next static-batch boundary and keeps what it did."""
    return BatchObject.of(repo.request_cancel(batch_id))
