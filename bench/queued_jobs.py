"""Queued jobs inserted in bulk, as `JobQueue.create_job` stores them (their input one shared
file record), for the benchmarks and tests that need a deep queue without uploading files
(bench.queue_claims, bench.fleet, tests/integration/test_claims.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

INSERT_CHUNK = 5000


def insert_queued_jobs(
    database_url: str, jobs: Sequence[tuple[str, int]], model: str, batch_size: int, shard_size: int | None = None
) -> dict[str, int]:
    """One queued job per (owner, lines) in `jobs`, in that order, cut into shards of
    `shard_size` lines (None: one shard each); their lines by job id."""
    from sqlalchemy import insert

    from app.core.database import Database
    from app.data.claims import deadline_hour
    from app.data.ids import new_id
    from app.data.models import FileRecord, Job, Shard

    now = datetime.now(UTC)
    expires = now + timedelta(days=1)
    sizes: dict[str, int] = {}
    job_rows, shard_rows = [], []
    for owner, lines in jobs:
        job_id = new_id("batch_")
        sizes[job_id] = lines
        job_rows.append(
            {
                "id": job_id,
                "owner": owner,
                "endpoint": "/v1/completions",
                "completion_window": "24h",
                "model": model,
                "batch_size": batch_size,
                "status": "queued",
                "sampling_defaults": {"max_tokens": 16},
                "request_total": lines,
                "created_at": now,
                "expires_at": expires,
            }
        )
        step = shard_size or lines
        for index, start in enumerate(range(0, lines, step)):
            shard_rows.append(
                {
                    "job_id": job_id,
                    "index": index,
                    "start_line": start,
                    "end_line": min(start + step, lines),
                    "next_line": start,
                    "owner": owner,
                    "job_created_at": now,
                    "deadline_at": deadline_hour(expires),
                }
            )
    db = Database(database_url)
    try:
        with db.session() as session:
            file_id = new_id("file-")
            session.add(
                FileRecord(
                    id=file_id,
                    owner=jobs[0][0] if jobs else "bench",
                    filename="queued.jsonl",
                    purpose="batch",
                    bytes=1,
                    sha256="0" * 64,
                    line_count=1,
                    storage_key=f"files/{file_id}",
                )
            )
            session.flush()
            for row in job_rows:
                row["input_file_id"] = file_id
            for first in range(0, len(job_rows), INSERT_CHUNK):
                session.execute(insert(Job), job_rows[first : first + INSERT_CHUNK])
            for first in range(0, len(shard_rows), INSERT_CHUNK):
                session.execute(insert(Shard), shard_rows[first : first + INSERT_CHUNK])
    finally:
        db.dispose()
    return sizes
