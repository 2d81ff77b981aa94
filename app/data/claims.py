"""The claim statements, in one place: a shard for a worker, a job for a finalizer; and
what a worker holds of a claimed shard and hands back for each window.

Each is one statement (a shard's claim is preceded, in its transaction, by CLAIM_PLANNER_SQL's
planner settings: two round trips): commented CTEs pick the candidate with `FOR UPDATE SKIP LOCKED`
(many claimants at once never wait on each other nor take the same row), then take the
lease. A lease that ran out is fair game, so a claimant that died is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import text

from app.core.line_offsets import LineOffsets
from app.data.json_values import EngineTelemetry, JobDefaults, JobEstimate
from app.data.models import JobStatus


@dataclass(frozen=True)
class ClaimedShard:
    shard_id: int
    job_id: str
    shard_index: int
    next_line: int
    end_line: int
    windows_done: int
    attempts: int  # claims since the shard last made progress
    input_key: str  # its job's run input (app.jobs.run_order) or input file: lines are counted in it
    endpoint: str
    batch_size: int | None  # None: fitted to the claimant's engine (JobQueue.fit_batch_size)
    sampling_defaults: JobDefaults
    model: str
    line_offsets: LineOffsets | None = None  # where every N-th line of input_key starts
    regrouped: bool = False  # input_key is its job's run input (app.jobs.run_order): line numbers differ
    # Its place in the order a worker's engine is shared in (worker.sharing): priority,
    # then deadline (the job's expires_at), then fair share between owners.
    priority: int = 0
    owner: str = ""
    expires_at: datetime | None = None

    @classmethod
    def from_row(cls, fields: Mapping[str, Any]) -> ClaimedShard:
        """CLAIM_SHARD_SQL's row (its defaults and line offsets as stored JSON)."""
        return cls(
            **{
                **fields,
                "sampling_defaults": JobDefaults.model_validate(fields["sampling_defaults"]),
                "line_offsets": LineOffsets.from_json(fields["line_offsets"]),
            }
        )


# How a claimant fits a job's batch size to its engine (worker.sizing), from the job's
# estimate (None while it is not counted yet): (the size, why). See JobQueue.fit_batch_size.
BatchSizeFit = Callable[[JobEstimate | None], tuple[int, str]]


@dataclass(frozen=True)
class WindowResult:
    """What one window (one or more static batches) did, recorded in the same transaction as its progress."""

    first_line: int
    next_line: int
    prompts: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    generate_seconds: float
    output_lengths: list[int] | None = None  # histogram over app.jobs.stats.OUTPUT_LENGTH_EDGES
    error_lines: list[int] | None = None  # offsets from first_line of the lines in the error part
    static_batches: int = 1  # generate calls in this window
    cached_tokens: int = 0  # prompt tokens the engine found in its prefix cache
    engine_stats: EngineTelemetry | None = None  # what the engine said of the window (app.jobs.telemetry)
    accelerator_seconds: float = 0.0  # generate_seconds x the accelerators the engine holds


WORK_CHANNEL = "llm_batch_work"  # LISTEN/NOTIFY channel: new shards to claim

# Whether shard `s`'s job is runnable on this worker's model. A scalar subquery, not a
# join: the planner cannot turn it around to start from `jobs`, so every scan below walks
# its index in claim order and stops at the first hit, with or without statistics (joined,
# a burst of 10,000 jobs before ANALYZE made it sort every waiting shard: 100 ms a claim).
#
# A worker that already shares its engine among shards (worker.sharing) claims more with
# `exclude_jobs` (the jobs it holds) and `overlapped_only` (a strict job needs the engine to
# itself): a new job comes in beside what runs, never a second piece of a held one.
_JOB_WANTED = (
    "j.status IN ('queued', 'in_progress') AND j.expires_at > now() AND j.model = :model"
    " AND j.id <> ALL(CAST(:exclude_jobs AS text[]))"
    " AND (NOT :overlapped_only OR (j.sampling_defaults ->> 'batching') IS DISTINCT FROM 'strict')"
)
# A worker sharing its engine never takes a shard retrying a crash beside what runs: that
# one runs alone, one static batch at a time, and would stall everything the worker holds.
_RUNNABLE = f"(SELECT {_JOB_WANTED} AND (NOT :overlapped_only OR s.attempts <= 1) FROM jobs j WHERE j.id = s.job_id)"

# The claim's plan, set for its transaction alone: walk indexes in claim order, never sort
# or bitmap-scan every waiting shard. Right after a burst of jobs, before autovacuum's
# ANALYZE, the planner takes the queue for a handful of rows and chose exactly that.
CLAIM_PLANNER_SQL = text("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off")

# The claim, in one statement (after CLAIM_PLANNER_SQL in the same transaction).
CLAIM_SHARD_SQL = text(
    f"""
    WITH RECURSIVE stale AS (
        -- First, a shard whose worker's lease ran out (it died or lost its machine):
        -- resuming it lets its job finish. ix_shards_running_lease holds one row per
        -- busy worker, so this is cheap.
        SELECT s.id
        FROM shards s
        JOIN jobs j ON j.id = s.job_id
        WHERE s.status = 'running' AND s.lease_expires_at < now() AND NOT :overlapped_only
          AND {_JOB_WANTED}
        ORDER BY s.lease_expires_at
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    ),
    top AS MATERIALIZED (
        -- Else a waiting shard of a runnable job for this model: the highest priority first,
        -- then the earliest deadline hour (ix_shards_owner_claim_order leads with both).
        SELECT s.priority, s.deadline_at FROM shards s
        WHERE s.status = 'queued' AND {_RUNNABLE}
        ORDER BY s.priority DESC, s.deadline_at
        LIMIT 1
    ),
    owners (owner) AS (
        -- The owners with shards waiting at that priority and deadline hour: a skip scan of
        -- ix_shards_owner_claim_order, one index probe per owner, however many shards wait.
        (SELECT s.owner FROM shards s
         WHERE s.status = 'queued' AND (s.priority, s.deadline_at) = (SELECT priority, deadline_at FROM top)
         ORDER BY s.priority DESC, s.deadline_at, s.owner LIMIT 1)
        UNION ALL
        SELECT (SELECT s.owner FROM shards s
                WHERE s.status = 'queued' AND (s.priority, s.deadline_at) = (SELECT priority, deadline_at FROM top)
                 AND s.owner > o.owner
                ORDER BY s.priority DESC, s.deadline_at, s.owner LIMIT 1)
        FROM owners o
        WHERE o.owner IS NOT NULL
    ),
    running AS MATERIALIZED (
        -- How many shards each owner has running now (one row per busy worker at most).
        SELECT owner, count(*) AS shards FROM shards WHERE status = 'running' GROUP BY owner
    ),
    turns AS MATERIALIZED (
        -- Owners share the workers: the owner with the fewest shards running first, then
        -- the one served least recently, then the one whose runnable work is oldest.
        SELECT o.owner, coalesce(r.shards, 0) AS running, t.last_claimed_at,
               (SELECT s.job_created_at FROM shards s
                WHERE s.status = 'queued' AND (s.priority, s.deadline_at) = (SELECT priority, deadline_at FROM top)
                 AND s.owner = o.owner
                  AND {_RUNNABLE}
                ORDER BY s.priority DESC, s.deadline_at, s.owner, s.job_created_at
                LIMIT 1) AS oldest
        FROM owners o
        LEFT JOIN running r ON r.owner = o.owner
        LEFT JOIN owner_turns t ON t.owner = o.owner
        WHERE o.owner IS NOT NULL
        ORDER BY 2, 3 NULLS FIRST, 4 NULLS LAST
    ),
    waiting AS (
        -- The first owner in turn with a shard no other claimant holds: its oldest job's
        -- next shard. Owners are tried in turn order and the first hit ends the scan, so
        -- only that shard is locked. SKIP LOCKED lets many workers claim at once without
        -- waiting on each other.
        SELECT pick.id
        FROM turns
        CROSS JOIN LATERAL (
            SELECT s.id FROM shards s
            WHERE s.status = 'queued' AND (s.priority, s.deadline_at) = (SELECT priority, deadline_at FROM top)
             AND s.owner = turns.owner
              AND {_RUNNABLE}
            ORDER BY s.priority DESC, s.deadline_at, s.owner, s.job_created_at, s.job_id, s.index
            LIMIT 1
            FOR UPDATE OF s SKIP LOCKED
        ) pick
        WHERE turns.oldest IS NOT NULL
        LIMIT 1
    ),
    candidate AS (
        -- `waiting` is only read (and its row only locked) when `stale` is empty.
        SELECT id FROM stale UNION ALL SELECT id FROM waiting LIMIT 1
    ),
    claimed AS (
        -- Take the lease.
        UPDATE shards s
        SET status = 'running', worker_id = :worker_id, attempts = s.attempts + 1,
            lease_expires_at = now() + make_interval(secs => :lease_seconds)
        FROM candidate
        WHERE s.id = candidate.id
        RETURNING s.*
    ),
    started AS (
        -- The first claim moves the job to in_progress.
        UPDATE jobs j
        SET status = 'in_progress', in_progress_at = coalesce(j.in_progress_at, now())
        FROM claimed
        WHERE j.id = claimed.job_id AND j.status = 'queued'
        RETURNING j.id
    ),
    busy AS (
        -- The worker shows what it holds.
        UPDATE workers w SET current_shard_id = claimed.id FROM claimed WHERE w.id = :worker_id RETURNING w.id
    ),
    turn AS (
        -- The owner has had a turn.
        INSERT INTO owner_turns (owner, last_claimed_at) SELECT owner, now() FROM claimed
        ON CONFLICT (owner) DO UPDATE SET last_claimed_at = excluded.last_claimed_at
        RETURNING owner
    )
    -- A job with no run input has SQL NULL there, or JSON null if written before the
    -- column was typed (app.core.json_column): neither is regrouped.
    SELECT claimed.id AS shard_id, claimed.job_id, claimed.index AS shard_index, claimed.next_line,
           claimed.end_line, claimed.windows_done, claimed.attempts, j.endpoint, j.batch_size, j.sampling_defaults,
           j.model, coalesce(j.run_input ->> 'key', f.storage_key) AS input_key,
           coalesce(j.run_input -> 'line_offsets', f.validation -> 'line_offsets') AS line_offsets,
           (j.run_input ->> 'key') IS NOT NULL AS regrouped,
           claimed.priority, claimed.owner, j.expires_at
    FROM claimed
    JOIN jobs j ON j.id = claimed.job_id
    JOIN files f ON f.id = j.input_file_id
    """
)


class ClaimParameters(TypedDict):
    """CLAIM_SHARD_SQL's bound parameters."""

    worker_id: str
    model: str
    lease_seconds: float
    exclude_jobs: list[str]  # the jobs the claimant holds already (worker.sharing)
    overlapped_only: bool  # only a job whose static batches may overlap others' in the engine


def claim_parameters(
    worker_id: str, model: str, lease_seconds: float, beside: Collection[str] = (), overlapped_only: bool = False
) -> ClaimParameters:
    """CLAIM_SHARD_SQL's parameters."""
    return ClaimParameters(
        worker_id=worker_id,
        model=model,
        lease_seconds=lease_seconds,
        exclude_jobs=list(beside),
        overlapped_only=overlapped_only,
    )


def deadline_hour(expires_at: datetime) -> datetime:
    """A job's deadline as the claim orders it: cut to the hour, so jobs due in the same
    hour share the workers fairly between their owners instead of queueing by the second."""
    return expires_at.replace(minute=0, second=0, microsecond=0)


# Statuses of a job whose shards are closed (or closing) and that waits for its finalizer.
FINALIZING_STATUSES = (JobStatus.FINALIZING, JobStatus.CANCELLING, JobStatus.EXPIRING)

STOP_ABANDONED_SHARDS_SQL = text(
    """
    -- A cancelled or expired job's shard that nobody will run again stops where its last
    -- window left it: a running one whose worker died (the shard claim takes only runnable
    -- jobs), or one given back to the queue after the job began to stop (a worker that
    -- released it on an engine failure or a shutdown). Its holder is forgotten, so a late
    -- write from it is refused.
    UPDATE shards s SET status = 'stopped', lease_expires_at = NULL, worker_id = NULL
    FROM jobs j
    WHERE j.id = s.job_id AND j.status IN ('cancelling', 'expiring')
      AND (s.status = 'queued' OR (s.status = 'running' AND s.lease_expires_at < now()))
    """
)

_CLAIM_FINALIZATION = """
    WITH candidate AS (
        -- A job waiting for its finalizer, or whose finalizer's lease ran out, with no
        -- shard left open. ix_jobs_to_finalize holds only such jobs.
        SELECT j.id
        FROM jobs j
        WHERE j.status IN ('finalizing', 'cancelling', 'expiring')
          AND (j.finalize_lease_expires_at IS NULL OR j.finalize_lease_expires_at < now())
          AND (CAST(:job_id AS text) IS NULL OR j.id = :job_id)
          AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.job_id = j.id AND s.status IN ('queued', 'running'))
        ORDER BY j.finalize_lease_expires_at NULLS FIRST, j.created_at
        LIMIT 1
        FOR UPDATE OF j {wait}
    )
    -- Take the lease; finalizing_at shows when the first finalizer started.
    UPDATE jobs j
    SET finalizer_id = :finalizer_id, finalize_attempts = j.finalize_attempts + 1,
        finalize_lease_expires_at = now() + make_interval(secs => :lease_seconds),
        finalizing_at = coalesce(j.finalizing_at, now())
    FROM candidate
    WHERE j.id = candidate.id
    RETURNING j.id, j.finalize_attempts
    """
# The next job of any: SKIP LOCKED, many finalizers (workers, API sweepers) claim at once
# without waiting on each other.
CLAIM_FINALIZATION_SQL = text(_CLAIM_FINALIZATION.format(wait="SKIP LOCKED"))
# One named job (its last shard just closed, or it was just cancelled): waits the moment
# another transaction holds its row (an estimate being written, a cancel) instead of
# passing it over; the WHERE is checked again on the row as it is then, so a job another
# finalizer claimed meanwhile is not taken twice.
CLAIM_FINALIZATION_OF_JOB_SQL = text(_CLAIM_FINALIZATION.format(wait=""))


@dataclass(frozen=True)
class Finalization:
    """A claimed finalization: the job, and how many claims it has had (this one included)."""

    job_id: str
    attempts: int
