"""Finalization: a job's parts joined into one output file and one error file, in input
order, and the job ended (completed, cancelled or expired).

The output file is its parts only, so the store joins it (`ObjectStore.concatenate`: on
S3 a multipart upload of server-side copies, the bytes never passing through here). The
error file interleaves each shard's error parts with lines made here for the lines it
never ran, so it is streamed through this process.

Finalization is leased work, claimed like a shard: whoever finalizes (the worker that
closed a job's last shard, an idle worker, the API's sweeper) holds a lease it renews
while it works. If it dies at any instruction, the lease runs out and another process
starts over; only the holder of the lease may end the job, so a late one changes nothing.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial

from app.core.backoff import Backoff, is_transient, retry_transient
from app.core.storage import Joined, ObjectStore, put_hashed
from app.data.ids import new_id, now
from app.data.json_values import UploadCheck
from app.data.models import FileRecord, JobStatus
from app.data.queue import FinalizationLost, JobQueue
from app.data.records import Records
from app.jobs.line_index import LineIndex
from app.jobs.output_lines import batch_error_line, part_key
from app.jobs.reordered import InInputOrder
from app.jobs.retention import expiry
from app.jobs.stats import batch_stats
from app.jobs.uploads import custom_ids_from

log = logging.getLogger(__name__)

FINALIZE_RETRY_SECONDS = 5.0  # after the first failed attempt, doubling after each (app.core.backoff)
MAX_FINALIZE_RETRY_SECONDS = 60.0

CANCELLED_REASON = ("batch_cancelled", "The batch was cancelled before this request ran.")
EXPIRED_REASON = ("batch_expired", "This request could not be executed before the completion window expired.")


def unrun_reason(status: JobStatus) -> tuple[str, str]:
    """Why a line never ran (error code and message), by the batch's status."""
    return EXPIRED_REASON if status in (JobStatus.EXPIRING, JobStatus.EXPIRED) else CANCELLED_REASON


def finalize_job(
    records: Records,
    queue: JobQueue,
    store: ObjectStore,
    job_id: str,
    finalizer_id: str,
    gpu_hour_price: float | None = None,
) -> None:
    """Joins and ends one job whose finalization `finalizer_id` holds."""
    job = records.get_job(job_id)
    runs = records.windows(job_id)
    shards = records.shards(job_id)
    input_file = records.get_file(job.input_file_id)

    def part_keys(kind: str, shard_index: int | None = None) -> list[str]:
        return [
            part_key(job_id, run.shard_index, run.seq, kind)
            for run in runs
            if (shard_index is None or run.shard_index == shard_index)
            and (run.completed if kind == "out" else run.failed) > 0
        ]

    def error_parts() -> Iterator[bytes]:
        # Per shard (shards cover consecutive lines): its error parts, then the lines it never ran.
        code, message = unrun_reason(JobStatus(job.status))
        for shard in shards:
            for key in part_keys("err", shard.index):
                yield from store.read_chunks(key)
            if shard.next_line < shard.end_line:  # from the recorded entry (or line) nearest before them
                ids = custom_ids_from(
                    store, index, input_file.storage_key, input_file.validation.line_offsets, shard.next_line
                )
                for custom_id in itertools.islice(ids, shard.end_line - shard.next_line):
                    yield batch_error_line(custom_id, message, code)

    index = LineIndex.of(input_file)

    unrun = sum(max(0, s.end_line - s.next_line) for s in shards)
    keep = job.output_expires_after_seconds
    failed = job.request_failed + unrun
    if job.run_input is None:
        joined = partial(store.concatenate, part_keys=part_keys("out"))
        output = _write_file(job.owner, f"{job_id}_output.jsonl", job.request_completed, keep, joined)
        streamed = partial(put_hashed, store, chunks=error_parts())
        errors = _write_file(job.owner, f"{job_id}_error.jsonl", failed, keep, streamed) if failed else None
    else:  # ran regrouped by prompt prefix: put back in input order
        regrouped = InInputOrder(store, job, runs, shards, unrun_reason(JobStatus(job.status)), index)
        try:
            outputs = partial(put_hashed, store, chunks=regrouped.lines(errors=False))
            output = _write_file(job.owner, f"{job_id}_output.jsonl", job.request_completed, keep, outputs)
            failures = partial(put_hashed, store, chunks=regrouped.lines(errors=True))
            errors = _write_file(job.owner, f"{job_id}_error.jsonl", failed, keep, failures) if failed else None
        finally:
            regrouped.close()
    store.put_bytes(
        f"batches/{job_id}/stats.json",
        batch_stats(job, runs, gpu_hour_price).model_dump_json(indent=2).encode(),
    )
    queue.complete_job(job_id, finalizer_id, output, errors, unrun)


def finalize_next(
    records: Records,
    queue: JobQueue,
    store: ObjectStore,
    finalizer_id: str,
    lease_seconds: float,
    max_attempts: int,
    job_id: str | None = None,
    *,
    gpu_hour_price: float | None = None,
) -> str | None:
    """Claims the next job waiting for finalization (or `job_id` only) and finalizes it,
    renewing the lease meanwhile. Returns the job's id, or None when nothing waits. A job
    whose finalization failed `max_attempts` times ends `failed`."""
    claim = queue.claim_finalization(finalizer_id, lease_seconds, job_id)
    if claim is None:
        return None
    if claim.attempts > max_attempts:
        message = f"Joining the results failed {claim.attempts - 1} times; see the service's logs."
        queue.fail_finalization(claim.job_id, finalizer_id, message)
        log.error("gave up finalizing %s after %d attempts", claim.job_id, claim.attempts - 1)
        return claim.job_id
    with _LeaseKept(lambda: queue.renew_finalization(claim.job_id, finalizer_id, lease_seconds), lease_seconds):
        try:
            retry_transient(  # rides out a storage or database outage shorter than half the lease
                lambda: finalize_job(records, queue, store, claim.job_id, finalizer_id, gpu_hour_price),
                what=f"finalizing {claim.job_id}",
                give_up_after_seconds=lease_seconds / 2,
            )
        except FinalizationLost:
            log.warning("finalization of %s was taken over by another process", claim.job_id)
            return None
        except Exception as exc:
            retry_after = Backoff.after(claim.attempts, FINALIZE_RETRY_SECONDS, MAX_FINALIZE_RETRY_SECONDS)
            queue.release_finalization(
                claim.job_id, finalizer_id, retry_after=retry_after, counted=not is_transient(exc)
            )
            raise
    log.info("finalized %s", claim.job_id)
    return claim.job_id


class _LeaseKept:
    """Renews a lease from a thread every third of its length while the block runs."""

    def __init__(self, renew: Callable[[], bool], lease_seconds: float) -> None:
        self._renew = renew
        self._interval = lease_seconds / 3
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                if not self._renew():
                    return  # taken over: the commit will be refused
            except Exception:  # a brief outage; the next beat retries
                log.warning("could not renew a finalization lease", exc_info=True)


def _write_file(
    owner: str, filename: str, lines: int, keep_seconds: int | None, write: Callable[[str], Joined]
) -> FileRecord:
    """Writes one joined file with `write(key)`; it expires `keep_seconds` after it is
    written (None: kept). Its sha256 is "" when the store joined it without reading it
    (S3's server-side copy): the hash is informational (the API shows it; nothing checks
    it), and reading the whole output back to hash it would undo what the copy saves."""
    file_id = new_id("file-")
    key = f"files/{file_id}"
    joined = write(key)
    created = now()
    return FileRecord(
        id=file_id,
        owner=owner,
        filename=filename,
        purpose="batch_output",
        bytes=joined.bytes,
        sha256=joined.sha256 or "",
        line_count=lines,
        storage_key=key,
        validation=UploadCheck(),
        created_at=created,
        expires_at=expiry(created, keep_seconds),
    )
