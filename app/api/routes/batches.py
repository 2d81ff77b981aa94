"""Batches: create, poll, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from app.api.deps import BatchViewsDep, CallerDep, QueueDep, RecordsDep, SettingsDep, StoreDep, SweeperDep
from app.api.heavy_work import HeavyWork, get_heavy_work
from app.api.schemas import BatchCreate, BatchEstimate, BatchList, BatchObject, BatchRetry
from app.data.models import JobStatus
from app.jobs.create import Owner, create_job
from app.jobs.line_index import LineIndex
from app.jobs.results import results_page
from app.jobs.retries import merged_output, retry_failed
from app.jobs.stats import BatchStats, batch_stats

router = APIRouter(prefix="/v1/batches", tags=["batches"])
MAX_WAIT_SECONDS = 60.0  # a long poll's longest hold: under common proxies' idle timeouts
HeavyWorkDep = Annotated[HeavyWork, Depends(get_heavy_work)]


@router.post("", response_model=BatchObject | BatchEstimate)
async def create(
    body: BatchCreate,
    caller: CallerDep,
    records: RecordsDep,
    queue: QueueDep,
    settings: SettingsDep,
    heavy: HeavyWorkDep,
) -> BatchObject | BatchEstimate:
    """Create a batch from an uploaded file; a file that breaks the format gives a failed batch.

    With `dry_run: true`, nothing is queued: the answer is an estimate (lines, prompt
    tokens, requested output tokens, the lines that would fail and why, an ETA)."""
    if body.dry_run:
        return BatchEstimate.of(await heavy.dry_run(body.spec(), caller.scope))
    owner = Owner(caller.owner, caller.scope)
    job = await run_in_threadpool(create_job, records, queue, settings, body.spec(), owner, order=heavy.run_input)
    if job.status == JobStatus.QUEUED:
        heavy.record_estimate(job.id)
    return BatchObject.of(job, settings.gpu_hour_price)


@router.get("/{batch_id}", response_model=BatchObject)
async def get(
    batch_id: str,
    caller: CallerDep,
    views: BatchViewsDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Long poll: hold the answer up to this many seconds until the batch's status changes "
            "(answered at once when it has ended). A client waiting for the end learns of it at once "
            "instead of up to a poll interval late. An extension: OpenAI's API has no such parameter.",
        ),
    ] = 0.0,
) -> Response:
    """A batch's status, counts and throughput."""
    # The hot path of every poller: on the event loop, one shared read, bytes serialized once.
    return Response(await views.body(batch_id, caller.scope, wait), media_type="application/json")


@router.get("", response_model=BatchList)
def list_batches(
    caller: CallerDep,
    records: RecordsDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """Your batches, newest first, paged with `after`."""
    page = records.list_jobs(caller.scope, limit + 1, after)
    return BatchList.of([BatchObject.of(b, settings.gpu_hour_price) for b in page[:limit]], has_more=len(page) > limit)


@router.get("/{batch_id}/stats")
def stats(batch_id: str, caller: CallerDep, records: RecordsDep, settings: SettingsDep) -> BatchStats:
    """Throughput of a batch: totals, rates, timings, cost, output lengths and the per-window series."""
    job = records.get_job(batch_id, caller.scope)
    return batch_stats(job, records.windows(batch_id), settings.gpu_hour_price)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/jsonl": {}},
            "description": "output and error lines in the order they ran (input order unless regrouped by prefix)",
        }
    },
)
def results(
    batch_id: str,
    caller: CallerDep,
    records: RecordsDep,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, description="lines already read (0 for the start)")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> StreamingResponse:
    """The lines finished so far, in the order they run, from line `after` on, while the batch runs.

    That is input order, except for a batch whose lines were regrouped by prompt prefix
    (lines sharing a prefix run together): its lines come in that order, each with its
    custom_id, and its output file is in input order. Each line is in the output or error
    file's shape. `X-Next-After` is the cursor for the next call; `X-Complete: true` says
    no more lines will come.
    """
    job = records.get_job(batch_id, caller.scope)
    source = records.get_file(job.input_file_id)
    if job.output_file_id is not None:
        records.get_file(job.output_file_id)  # 404 once it expired or was deleted: its parts went with it
    input_key, line_offsets = source.storage_key, source.validation.line_offsets
    if job.run_input is not None:
        input_key, line_offsets = job.run_input.key, job.run_input.line_offsets
    windows, shards = records.windows(batch_id), records.shards(batch_id)
    index = LineIndex.of(source)  # where lines never run find their custom_ids
    page = results_page(store, job, windows, shards, input_key, after, limit, line_offsets, index)
    return StreamingResponse(
        page.lines,
        media_type="application/jsonl",
        headers={
            "X-Next-After": str(page.next_after),
            "X-Complete": "true" if page.complete else "false",
            "X-Lines": str(page.next_after - page.after),
        },
    )


@router.post("/{batch_id}/retry", response_model=BatchObject)
async def retry(
    batch_id: str,
    caller: CallerDep,
    records: RecordsDep,
    queue: QueueDep,
    store: StoreDep,
    settings: SettingsDep,
    heavy: HeavyWorkDep,
    body: BatchRetry | None = None,
) -> BatchObject:
    """A new batch of this finished batch's failed and unrun lines, linked to it as its child,
    optionally with a new `max_tokens` for every line or prompts cut to fit the context."""
    overrides = (body or BatchRetry()).overrides()
    child = await heavy.run(retry_failed, records, queue, store, settings, batch_id, overrides, caller.scope)
    return BatchObject.of(child, settings.gpu_hour_price)


@router.get(
    "/{batch_id}/merged_output",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}, "description": "output lines in input order"}},
)
def merged(batch_id: str, caller: CallerDep, records: RecordsDep, store: StoreDep) -> StreamingResponse:
    """The batch's output with the lines its retries answered filled in, in input order."""
    return StreamingResponse(merged_output(records, store, batch_id, caller.scope), media_type="application/jsonl")


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel(
    batch_id: str, caller: CallerDep, queue: QueueDep, sweeper: SweeperDep, settings: SettingsDep
) -> BatchObject:
    """Cancel: the batch answers `cancelling` at once, stops at its next window boundary and
    ends `cancelled` with what it did (its output so far, the rest in the error file)."""
    job = queue.request_cancel(batch_id, caller.scope)
    sweeper.poke(job.id)  # with nothing running, this process ends it now; else its worker does
    return BatchObject.of(job, settings.gpu_hour_price)
