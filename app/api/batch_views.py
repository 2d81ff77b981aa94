"""What a poll of `GET /v1/batches/{id}` answers: the batch read once (one statement) and
serialized once for every poller that asked while the read before it was in flight; with
`wait`, a long poll that answers when the batch's status changes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.api.coalesce import CoalescedReads
from app.api.schemas import BatchObject
from app.api.status_changes import StatusChanges
from app.core.errors import NotFound
from app.data.records import Records, visible_to

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchView:
    owner: str
    status: str  # the batch object's (OpenAI's) status
    body: bytes  # the BatchObject as JSON, the same for every caller allowed to see it


class BatchViews:
    """Batches as polled; concurrent polls of one batch share a read (`CoalescedReads`),
    and each caller's right to see it is checked against the owner read with it."""

    def __init__(
        self, records: Records, gpu_hour_price: float | None = None, changes: StatusChanges | None = None
    ) -> None:
        self._records = records
        self._gpu_hour_price = gpu_hour_price
        self._changes = changes
        self._reads: CoalescedReads[str, BatchView | None] = CoalescedReads(self._read)

    async def body(self, batch_id: str, scope: str | None, wait_seconds: float = 0.0) -> bytes:
        """The batch's JSON for a caller scoped to `scope`; another owner's is not found.
        With `wait_seconds`, an unended batch is answered once its status differs from the
        one it had when the poll came, or when the time is up (a long poll)."""
        view = await self._view(batch_id, scope)
        if wait_seconds <= 0 or view.status in ENDED or self._changes is None:
            return view.body
        first, deadline = view.status, time.monotonic() + wait_seconds
        with self._changes.watch(batch_id) as watch:
            view = await self._view(batch_id, scope)  # read again once notifications are watched
            while view.status == first and (left := deadline - time.monotonic()) > 0:
                await watch.wait(left)
                view = await self._view(batch_id, scope)
        return view.body

    async def _view(self, batch_id: str, scope: str | None) -> BatchView:
        view = await self._reads.get(batch_id)
        if view is None or not visible_to(scope, view.owner):
            raise NotFound("batch", batch_id)
        return view

    def _read(self, batch_id: str) -> BatchView | None:
        try:
            job, workers, children = self._records.job_view(batch_id)
        except NotFound:
            return None
        batch = BatchObject.of(job, self._gpu_hour_price, workers=workers, children=children)
        return BatchView(job.owner, batch.status, batch.model_dump_json().encode())
