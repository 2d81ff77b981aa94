"""What a poll of `GET /v1/batches/{id}` answers: the batch read once (one statement) and
serialized once for every poller that asked while the read before it was in flight."""

from __future__ import annotations

from dataclasses import dataclass

from app.api.coalesce import CoalescedReads
from app.api.schemas import BatchObject
from app.core.errors import NotFound
from app.data.records import Records, visible_to


@dataclass(frozen=True)
class BatchView:
    owner: str
    body: bytes  # the BatchObject as JSON, the same for every caller allowed to see it


class BatchViews:
    """Batches as polled; concurrent polls of one batch share a read (`CoalescedReads`),
    and each caller's right to see it is checked against the owner read with it."""

    def __init__(self, records: Records, gpu_hour_price: float | None = None) -> None:
        self._records = records
        self._gpu_hour_price = gpu_hour_price
        self._reads: CoalescedReads[str, BatchView | None] = CoalescedReads(self._read)

    async def body(self, batch_id: str, scope: str | None) -> bytes:
        """The batch's JSON for a caller scoped to `scope`; another owner's is not found."""
        view = await self._reads.get(batch_id)
        if view is None or not visible_to(scope, view.owner):
            raise NotFound("batch", batch_id)
        return view.body

    def _read(self, batch_id: str) -> BatchView | None:
        try:
            job, workers, children = self._records.job_view(batch_id)
        except NotFound:
            return None
        body = BatchObject.of(job, self._gpu_hour_price, workers=workers, children=children).model_dump_json()
        return BatchView(job.owner, body.encode())
