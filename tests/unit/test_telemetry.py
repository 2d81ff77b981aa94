"""Per-batch engine telemetry from request timings."""

from __future__ import annotations

import pytest

from app.data.json_values import EngineTelemetry
from app.jobs.endpoints.generate_call import Choice, Generation, RequestTiming
from app.jobs.telemetry import batch_telemetry, combine


def generation(prompt: int, completion: int, scheduled: float, first: float, last: float, preempted: int = 0):
    return Generation(
        prompt_tokens=prompt,
        choices=[Choice(text="x", completion_tokens=completion, finish_reason="length")],
        timing=RequestTiming(scheduled=scheduled, first_token=first, last_token=last, preemptions=preempted),
    )


def test_prefill_decode_and_the_idle_tail_of_one_long_answer() -> None:
    batch = [
        generation(100, 11, scheduled=10.0, first=10.5, last=11.0),
        generation(100, 11, scheduled=10.0, first=11.0, last=12.0, preempted=1),
        generation(200, 41, scheduled=10.0, first=11.0, last=15.0),
    ]
    stats = batch_telemetry(batch, kv_cache_tokens=1000)
    assert stats is not None and stats.model_dump() == {
        "prefill_seconds": 1.0,
        "prefill_tokens_per_second": 400.0,
        "decode_seconds": 4.0,
        "decode_tokens_per_second": pytest.approx((63 - 3) / 4.0, abs=0.1),
        "idle_tail_seconds": 3.0,
        "idle_tail_fraction": 0.6,
        "preemptions": 1,
        "kv_cache_demand": 0.463,
        "static_batches": 1,
        "cached_prompt_tokens": 0,
    }


def test_a_window_of_static_batches_adds_times_and_weighs_rates_by_their_seconds() -> None:
    first = batch_telemetry([generation(100, 11, scheduled=0.0, first=1.0, last=2.0)], kv_cache_tokens=1000)
    second = batch_telemetry([generation(300, 21, scheduled=5.0, first=6.0, last=9.0)], kv_cache_tokens=1000)
    window = combine([first, None, second])
    assert window is not None and first is not None and second is not None
    assert window.static_batches == 2 and window.prefill_seconds == 2.0 and window.decode_seconds == 4.0
    assert window.prefill_tokens_per_second == 200.0  # (100 + 300) prompt tokens over 2 s
    assert window.kv_cache_demand == max(first.kv_cache_demand or 0, second.kv_cache_demand or 0)
    # as a window's `engine_stats` column stores it, and an older row with a field dropped since
    assert EngineTelemetry.model_validate(window.model_dump(mode="json")) == window
    assert EngineTelemetry.model_validate({**window.model_dump(), "dropped_field": 1}) == window
    assert combine([None, None]) is None


def test_no_timings_no_telemetry() -> None:
    untimed = Generation(prompt_tokens=3, choices=[Choice(text="x", completion_tokens=1, finish_reason="stop")])
    assert batch_telemetry([untimed], kv_cache_tokens=None) is None
