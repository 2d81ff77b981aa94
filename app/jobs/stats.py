"""Throughput statistics of a job, from its recorded static batches."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from app.data.json_values import EngineTelemetry
from app.data.models import Job, Window
from app.jobs.telemetry import combine

# Output-length histogram buckets: [1, 2), [2, 4), [4, 8), … generated tokens per line.
# A wide spread inside a static batch means idle slots: short answers wait for long ones.
OUTPUT_LENGTH_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def length_histogram(lengths: Iterable[int]) -> list[int]:
    counts = [0] * len(OUTPUT_LENGTH_EDGES)
    for length in lengths:
        counts[bisect_right(OUTPUT_LENGTH_EDGES, length) - 1] += 1
    return counts


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return round((later - earlier).total_seconds(), 3) if later and earlier else None


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return round(numerator / denominator, 1) if denominator else None


class Throughput(BaseModel):
    """A job's rates and timings, computed one way for the API (whose batch object extends
    this model), stats.json and the dashboard."""

    model_config = ConfigDict(frozen=True)

    generate_seconds: float = Field(description="summed over its static batches' generate calls")
    generation_tokens_per_second: float | None = Field(description="generated tokens per generate-second")
    end_to_end_seconds: float | None = Field(description="from the first claim to the end, or to now while it runs")
    end_to_end_tokens_per_second: float | None
    queue_wait_seconds: float | None = Field(description="from creation to the first claim")
    time_to_first_window_seconds: float | None = Field(description="from the first claim to the first window")


def ended_at(job: Job) -> datetime | None:
    return job.completed_at or job.cancelled_at or job.expired_at or job.failed_at


def throughput(job: Job, at: datetime | None = None) -> Throughput:
    """`at` is "now" for a job that has not ended (the clock of the caller's choosing)."""
    end = ended_at(job) or (at or datetime.now(UTC))
    wall = _seconds(end, job.in_progress_at)
    return Throughput(
        generate_seconds=round(job.generate_seconds, 3),
        generation_tokens_per_second=_ratio(job.completion_tokens, job.generate_seconds),
        end_to_end_seconds=wall,
        end_to_end_tokens_per_second=_ratio(job.completion_tokens, wall),
        queue_wait_seconds=_seconds(job.in_progress_at, job.created_at),
        time_to_first_window_seconds=_seconds(job.first_window_at, job.in_progress_at),
    )


@dataclass(frozen=True)
class Cost:
    """What a job held of the accelerators, and with GPU_HOUR_PRICE set, what that cost."""

    accelerator_seconds: float  # engine wall seconds x tensor parallel size, summed over windows
    gpu_hour_price: float | None
    cost: float | None
    cost_per_million_output_tokens: float | None


def cost(job: Job, gpu_hour_price: float | None) -> Cost:
    spent = job.accelerator_seconds / 3600 * gpu_hour_price if gpu_hour_price is not None else None
    per_million = spent / job.completion_tokens * 1e6 if spent is not None and job.completion_tokens else None
    return Cost(
        accelerator_seconds=round(job.accelerator_seconds, 4),
        gpu_hour_price=gpu_hour_price,
        cost=round(spent, 6) if spent is not None else None,
        cost_per_million_output_tokens=round(per_million, 6) if per_million is not None else None,
    )


class EngineTotals(BaseModel):
    """The engine's telemetry over all of a job's static batches."""

    static_batches: int
    prefill_seconds: float
    prefill_tokens_per_second: float | None
    decode_seconds: float
    decode_tokens_per_second: float | None
    idle_tail_seconds: float
    idle_tail_share_of_generate: float | None
    preemptions: int
    peak_kv_cache_demand: float | None
    cached_prompt_tokens: int


class LengthBucket(BaseModel):
    """Lines whose output had from `from_tokens` to below `below_tokens` tokens."""

    from_tokens: int
    below_tokens: int | None
    lines: int


class JobStats(Throughput):
    """Totals, rates, timings, cost and the output-length distribution of one job."""

    batch_id: str
    model: str
    batch_size: int | None
    batch_size_basis: str | None
    batching: str
    tensor_parallel_size: int | None
    workers: int
    static_batches: int
    prompts: int
    prompt_tokens: int
    completion_tokens: int
    engine: EngineTotals | None
    accelerator_seconds: float
    gpu_hour_price: float | None
    cost: float | None
    cost_per_million_output_tokens: float | None
    output_length_histogram: list[LengthBucket]


class WindowPoint(BaseModel):
    """One recorded window (one or more static batches)."""

    shard: int
    seq: int
    first_line: int
    static_batches: int
    prompts: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    generate_seconds: float
    accelerator_seconds: float
    tokens_per_second: float
    worker_id: str
    recorded_at: str
    engine: EngineTelemetry | None


class BatchStats(JobStats):
    """A job's stats and its per-window series (`/v1/batches/{id}/stats`, `stats.json`)."""

    windows: list[WindowPoint]


def job_stats(job: Job, windows: list[Window], gpu_hour_price: float | None = None) -> JobStats:
    """Totals, rates, timings, cost and the output-length distribution of one job."""
    histogram = [0] * len(OUTPUT_LENGTH_EDGES)
    for window in windows:
        for i, count in enumerate(window.output_lengths or []):
            histogram[i] += count
    return JobStats(
        batch_id=job.id,
        model=job.model,
        batch_size=job.batch_size,
        batch_size_basis=job.batch_size_basis,
        batching=job.sampling_defaults.batching,
        tensor_parallel_size=job.tensor_parallel_size,
        workers=len({w.worker_id for w in windows}),
        static_batches=sum(w.static_batches for w in windows),
        prompts=sum(w.prompts for w in windows),
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        **throughput(job).model_dump(),
        engine=engine_totals(windows),
        **asdict(cost(job, gpu_hour_price)),
        output_length_histogram=[
            LengthBucket(from_tokens=low, below_tokens=high, lines=count)
            for low, high, count in zip(OUTPUT_LENGTH_EDGES, [*OUTPUT_LENGTH_EDGES[1:], None], histogram, strict=True)
            if count
        ],
    )


def batch_stats(job: Job, windows: list[Window], gpu_hour_price: float | None = None) -> BatchStats:
    """`job_stats` and the window series."""
    return BatchStats(**dict(job_stats(job, windows, gpu_hour_price)), windows=window_series(windows))


def window_series(windows: list[Window]) -> list[WindowPoint]:
    """One entry per recorded window (one or more static batches), in the order they were recorded."""
    return [
        WindowPoint(
            shard=w.shard_index,
            seq=w.seq,
            first_line=w.first_line,
            static_batches=w.static_batches,
            prompts=w.prompts,
            completed=w.completed,
            failed=w.failed,
            prompt_tokens=w.prompt_tokens,
            completion_tokens=w.completion_tokens,
            generate_seconds=round(w.generate_seconds, 4),
            accelerator_seconds=round(w.accelerator_seconds, 4),
            tokens_per_second=round(w.tokens_per_second, 1),
            worker_id=w.worker_id,
            recorded_at=w.created_at.isoformat(),
            engine=w.engine_stats,
        )
        for w in sorted(windows, key=lambda w: w.created_at)
    ]


def engine_totals(windows: list[Window]) -> EngineTotals | None:
    """The engine's telemetry over all of a job's static batches."""
    combined = combine([w.engine_stats for w in windows])
    if combined is None:
        return None
    generate = sum(w.generate_seconds for w in windows if w.engine_stats)
    return EngineTotals(
        static_batches=combined.static_batches,
        prefill_seconds=round(combined.prefill_seconds, 3),
        prefill_tokens_per_second=combined.prefill_tokens_per_second,
        decode_seconds=round(combined.decode_seconds, 3),
        decode_tokens_per_second=combined.decode_tokens_per_second,
        idle_tail_seconds=round(combined.idle_tail_seconds, 3),
        idle_tail_share_of_generate=round(combined.idle_tail_seconds / generate, 4) if generate else None,
        preemptions=combined.preemptions,
        peak_kv_cache_demand=combined.kv_cache_demand,
        cached_prompt_tokens=combined.cached_prompt_tokens,
    )
