"""Retry what failed: a child batch of a finished batch's failed and unrun lines, and
the parent's output with the answers its retries found filled in.

A child's input file holds the parent's input lines whose custom_id is in the
parent's error file, in input order, with the overrides applied to each line (so
the file says exactly what ran). The child links to its parent; retries of a
child link to the child, and the merged output of any batch takes the latest
answer for each of its lines from everything below it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.core.errors import Conflict, InvalidRequest
from app.core.settings import Settings
from app.core.storage import ChunkReader, ObjectStore, read_lines
from app.data.models import TERMINAL_STATUSES, FileRecord, Job, JobStatus
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.create import JobSpec, Owner, check_priority, create_job
from app.jobs.endpoints import endpoint_for
from app.jobs.line_index import LineIndex
from app.jobs.output_lines import custom_id_of
from app.jobs.retention import retention_seconds
from app.jobs.uploads import UploadLimits, store_upload


def _digest(custom_id: str) -> bytes:
    return hashlib.blake2b(custom_id.encode(), digest_size=16).digest()


def _lines_of(store: ObjectStore, key: str) -> Iterator[bytes]:
    return (line for line in read_lines(store, key) if line.strip())


@dataclass(frozen=True)
class RetryOverrides:
    """What a retry changes; everything else is the parent's."""

    max_tokens: int | None = None  # replaces each line's output cap (its kind's `cap_output`)
    truncate_prompts: bool = False
    batch_size: int | None = None
    priority: int | None = None
    metadata: dict[str, str] | None = None


def _with_overrides(raw: bytes, overrides: RetryOverrides, endpoint: str) -> bytes:
    if overrides.max_tokens is None:
        return raw
    line = json.loads(raw)
    body = line["body"] if isinstance(line.get("body"), dict) else line
    endpoint_for(endpoint).cap_output(body, overrides.max_tokens)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()


def retry_failed(
    records: Records,
    queue: JobQueue,
    store: ObjectStore,
    settings: Settings,
    parent_id: str,
    overrides: RetryOverrides,
    scope: str | None,
) -> Job:
    """A new queued job of the parent's failed and unrun lines, owned by the parent's owner."""
    check_priority(overrides.priority, scope)
    parent = records.get_job(parent_id, scope)
    status = JobStatus(parent.status)
    if status not in TERMINAL_STATUSES:
        raise Conflict(f"Batch {parent_id} is {status.value}; retry it once it has ended.")
    if parent.error_file_id is None:
        raise Conflict(f"Batch {parent_id} has no failed lines to retry.")
    if not endpoint_for(parent.endpoint).generates and overrides.max_tokens is not None:
        raise InvalidRequest(f"max_tokens does not apply to a {parent.endpoint} batch.", param="max_tokens")
    failed = {
        _digest(custom_id_of(line)) for line in _lines_of(store, records.get_file(parent.error_file_id).storage_key)
    }
    picked = (
        _with_overrides(raw, overrides, parent.endpoint) + b"\n"
        for raw, custom_id in _input_lines(store, records.get_file(parent.input_file_id))
        if _digest(custom_id) in failed
    )
    retry_file = store_upload(
        records,
        store,
        ChunkReader(picked),  # type: ignore[arg-type]
        owner=parent.owner,
        filename=f"{parent_id}_retry.jsonl",
        purpose="batch",
        limits=UploadLimits(settings.max_upload_bytes, settings.max_upload_lines, settings.max_reported_errors),
        keep_seconds=retention_seconds(None, settings.file_retention_days),
    )
    defaults = parent.sampling_defaults
    spec = JobSpec(
        input_file_id=retry_file.id,
        endpoint=parent.endpoint,
        model=parent.model,
        # A size the parent's worker fitted is fitted again for the retry (its lines differ).
        batch_size=overrides.batch_size or (None if parent.batch_size_basis else parent.batch_size),
        max_tokens=defaults.max_tokens,
        # A retry inherits its parent's priority, but only an admin keeps one above 0.
        priority=overrides.priority if overrides.priority is not None else min(parent.priority, 0 if scope else 100),
        metadata=overrides.metadata if overrides.metadata is not None else parent.metadata_,
        truncate_prompts=overrides.truncate_prompts or defaults.truncate_prompts,
        pack_by_length=defaults.pack_window is not None,
        batching=defaults.batching,
        output_expires_after_seconds=parent.output_expires_after_seconds,
    )
    return create_job(records, queue, settings, spec, Owner(parent.owner, scope=None), parent_job_id=parent.id)


def merged_output(records: Records, store: ObjectStore, job_id: str, scope: str | None) -> Iterator[bytes]:
    """The batch's output lines with the lines its retries answered filled in, in input
    order; a line no attempt answered is left out (the last retry's error file has it).
    Streamed in memory bounded by the number of retries: every output is in the input's
    order, so one pass over each, side by side, merges them."""
    job = records.get_job(job_id, scope)
    if job.output_file_id is None:
        raise Conflict(f"Batch {job_id} has no output yet (it is {job.status}).")
    outputs = [job.output_file_id] + [
        child.output_file_id
        for child in records.descendants(job_id)  # oldest first: a later retry's answer wins
        if child.output_file_id is not None
    ]
    answers = [_lines_of(store, records.get_file(file_id).storage_key) for file_id in outputs]
    source = records.get_file(job.input_file_id)
    index = LineIndex.of(source)
    if index is not None:  # the input's custom_ids from its line index, not its lines parsed
        return _merge(index.custom_ids_from(store, 0), answers)
    return _merge(map(custom_id_of, _lines_of(store, source.storage_key)), answers)


def _input_lines(store: ObjectStore, source: FileRecord) -> Iterator[tuple[bytes, str]]:
    """The input's lines (blank ones left out) with their custom_ids: from its line index, or
    for a file uploaded before indexes, parsed from the line."""
    index = LineIndex.of(source)
    lines = read_lines(store, source.storage_key)
    pairs: Iterator[tuple[bytes, str]]
    if index is not None:
        pairs = zip(lines, index.custom_ids_from(store, 0), strict=True)
    else:
        pairs = ((raw, custom_id_of(raw)) for raw in lines)
    return ((raw, custom_id) for raw, custom_id in pairs if raw.strip())


def _merge(input_ids: Iterable[str], answers: list[Iterator[bytes]]) -> Iterator[bytes]:
    """Walks the input's custom_ids in order beside every output (the batch's own first, then
    its retries oldest first): each output answers some of the input's lines in input order, so
    each one's next line is either this input line's answer or a later one's. A line
    answered by several takes the last one's answer."""
    heads = [next(stream, None) for stream in answers]
    head_ids = [custom_id_of(line) if line is not None else None for line in heads]
    for custom_id in input_ids:
        answer: bytes | None = None
        for k, stream in enumerate(answers):
            if heads[k] is not None and head_ids[k] == custom_id:
                answer = heads[k]
                heads[k] = next(stream, None)
                head_ids[k] = custom_id_of(heads[k]) if heads[k] is not None else None  # type: ignore[arg-type]
        if answer is not None:
            yield answer + b"\n"
