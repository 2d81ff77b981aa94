"""A job's throughput and output-length histogram."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from app.jobs.stats import OUTPUT_LENGTH_EDGES, length_histogram, throughput

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def job(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "completion_tokens": 0,
        "generate_seconds": 0.0,
        "created_at": T0,
        "in_progress_at": None,
        "first_window_at": None,
        "completed_at": None,
        "cancelled_at": None,
        "expired_at": None,
        "failed_at": None,
    }
    return SimpleNamespace(**(base | fields))


def seconds(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def test_a_running_job_is_measured_up_to_the_given_moment() -> None:
    running = job(completion_tokens=1000, generate_seconds=4.0, in_progress_at=seconds(10), first_window_at=seconds(15))
    got = throughput(running, at=seconds(30))
    assert got.end_to_end_seconds == 20.0 and got.end_to_end_tokens_per_second == 50.0
    assert got.generation_tokens_per_second == 250.0
    assert got.queue_wait_seconds == 10.0 and got.time_to_first_window_seconds == 5.0


def test_a_completed_job_is_measured_to_its_end_not_to_now() -> None:
    done = job(completion_tokens=600, generate_seconds=3.0, in_progress_at=seconds(10), completed_at=seconds(40))
    got = throughput(done, at=seconds(1000))
    assert got.end_to_end_seconds == 30.0 and got.end_to_end_tokens_per_second == 20.0


def test_a_failed_job_is_measured_to_its_failure() -> None:
    failed = job(completion_tokens=100, in_progress_at=seconds(10), failed_at=seconds(20))
    assert throughput(failed, at=seconds(1000)).end_to_end_seconds == 10.0


def test_a_job_never_claimed_has_no_timings_or_rates() -> None:
    got = throughput(job(), at=seconds(50))
    assert got.end_to_end_seconds is None and got.end_to_end_tokens_per_second is None
    assert got.queue_wait_seconds is None and got.time_to_first_window_seconds is None
    assert got.generation_tokens_per_second is None and got.generate_seconds == 0.0


def test_the_histogram_counts_each_length_in_its_power_of_two_bucket() -> None:
    counts = length_histogram([0, 1, 2, 3, 4, 7, 8, 1000])
    assert len(counts) == len(OUTPUT_LENGTH_EDGES)
    assert counts[:5] == [1, 1, 2, 2, 1]  # [0,1) [1,2) [2,4) [4,8) [8,16)
    assert counts[OUTPUT_LENGTH_EDGES.index(512)] == 1  # 1000 in [512, 1024)
    assert sum(counts) == 8


def test_lengths_beyond_the_last_edge_land_in_the_last_bucket() -> None:
    assert length_histogram([32768, 100_000])[-1] == 2
