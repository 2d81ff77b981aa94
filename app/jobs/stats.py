"""Throughput statistics of a job, from its recorded static batches."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

from app.data.models import Job, Window

# Output-length histogram buckets: [1, 2), [2, 4), [4, 8), … generated tokens per line.
# A wide spread inside a static batch means idle slots: short answers wait for long ones.
OUTPUT_LENGTH_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def length_histogram(lengths: Iterable[int]) -> list[int]:
    counts = [0] * len(OUTPUT_LENGTH_EDGES)
    for length in lengths:
        counts[bisect_right(OUTPUT_LENGTH_EDGES, length) - 1] += 1
    return counts


def _seconds(later: Any, earlier: Any) -> float | None:
    return (later - earlier).total_seconds() if later and earlier else None


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return round(numerator / denominator, 1) if denominator else None


def job_stats(job: Job, runs: list[Window]) -> dict[str, Any]:
    """Totals, rates, timings and the output-length distribution of one job."""
    generate_seconds = sum(r.generate_seconds for r in runs)
    completion_tokens = sum(r.completion_tokens for r in runs)
    ended = job.completed_at or job.cancelled_at or job.expired_at or job.failed_at
    last_run = max((r.created_at for r in runs), default=None)
    wall = _seconds(ended or last_run, job.in_progress_at)
    histogram = [0] * len(OUTPUT_LENGTH_EDGES)
    for run in runs:
        for i, count in enumerate(run.output_lengths or []):
            histogram[i] += count
    return {
        "job_id": job.id,
        "model": job.model,
        "batch_size": job.batch_size,
        "tensor_parallel_size": job.tensor_parallel_size,
        "workers": len({r.worker_id for r in runs}),
        "static_batches": len(runs),
        "prompts": sum(r.prompts for r in runs),
        "prompt_tokens": sum(r.prompt_tokens for r in runs),
        "completion_tokens": completion_tokens,
        "generate_seconds": round(generate_seconds, 3),
        "generation_tokens_per_second": _ratio(completion_tokens, generate_seconds),
        "end_to_end_seconds": round(wall, 3) if wall is not None else None,
        "end_to_end_tokens_per_second": _ratio(completion_tokens, wall),
        "queue_wait_seconds": _seconds(job.in_progress_at, job.created_at),
        "time_to_first_batch_seconds": _seconds(job.first_window_at, job.in_progress_at),
        "engine": engine_totals(runs),
        "output_length_histogram": [
            {"from_tokens": low, "below_tokens": high, "lines": count}
            for low, high, count in zip(OUTPUT_LENGTH_EDGES, [*OUTPUT_LENGTH_EDGES[1:], None], histogram, strict=True)
            if count
        ],
    }


def batch_series(runs: list[Window]) -> list[dict[str, Any]]:
    """One entry per static batch, in the order they were recorded."""
    return [
        {
            "shard": r.shard_index,
            "seq": r.seq,
            "first_line": r.first_line,
            "prompts": r.prompts,
            "completed": r.completed,
            "failed": r.failed,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "generate_seconds": round(r.generate_seconds, 4),
            "tokens_per_second": round(r.tokens_per_second, 1),
            "worker_id": r.worker_id,
            "recorded_at": r.created_at.isoformat(),
            "engine": r.engine_stats,
        }
        for r in sorted(runs, key=lambda r: r.created_at)
    ]


def combine_engine_stats(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One record for several static batches' telemetry (app.jobs.telemetry): times, tails,
    preemptions and static batches add up, rates are weighted by their seconds, KV-cache
    demand is the peak. A packed window's record, and a job's totals."""
    reported = [p for p in parts if p]
    if not reported:
        return None

    def weighted_rate(rate: str, seconds: str) -> float | None:
        total = sum(p[seconds] for p in reported)
        return round(sum((p[rate] or 0) * p[seconds] for p in reported) / total, 1) if total > 0 else None

    prefill = sum(p["prefill_seconds"] for p in reported)
    decode = sum(p["decode_seconds"] for p in reported)
    idle_tail = sum(p["idle_tail_seconds"] for p in reported)
    demands = [p["kv_cache_demand"] for p in reported if p["kv_cache_demand"] is not None]
    return {
        "prefill_seconds": round(prefill, 4),
        "prefill_tokens_per_second": weighted_rate("prefill_tokens_per_second", "prefill_seconds"),
        "decode_seconds": round(decode, 4),
        "decode_tokens_per_second": weighted_rate("decode_tokens_per_second", "decode_seconds"),
        "idle_tail_seconds": round(idle_tail, 4),
        "idle_tail_fraction": round(idle_tail / (prefill + decode), 4) if prefill + decode > 0 else 0.0,
        "preemptions": sum(p["preemptions"] for p in reported),
        "kv_cache_demand": max(demands) if demands else None,
        "static_batches": sum(p.get("static_batches", 1) for p in reported),
    }


def engine_totals(runs: list[Window]) -> dict[str, Any] | None:
    """The engine's telemetry over all of a job's static batches."""
    combined = combine_engine_stats([r.engine_stats for r in runs])
    if combined is None:
        return None
    generate = sum(r.generate_seconds for r in runs if r.engine_stats)
    idle_tail = combined["idle_tail_seconds"]
    return {
        "static_batches": combined["static_batches"],
        "prefill_seconds": round(combined["prefill_seconds"], 3),
        "prefill_tokens_per_second": combined["prefill_tokens_per_second"],
        "decode_seconds": round(combined["decode_seconds"], 3),
        "decode_tokens_per_second": combined["decode_tokens_per_second"],
        "idle_tail_seconds": round(idle_tail, 3),
        "idle_tail_share_of_generate": round(idle_tail / generate, 4) if generate else None,
        "preemptions": combined["preemptions"],
        "peak_kv_cache_demand": combined["kv_cache_demand"],
    }
