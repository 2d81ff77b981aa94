"""What the engine's own timings say about one static batch.

From each request's scheduled, first-token and last-token times:

- prefill: from the first request scheduled to the last first token; its rate is
  prompt tokens per second;
- decode: from then to the last token; its rate counts the tokens after each
  choice's first;
- idle tail: how long the last sequence ran alone after every other had finished,
  the time static batching pays for one long answer;
- preemptions: how often the engine evicted a sequence for lack of KV cache;
- KV-cache demand: the batch's prompt and output tokens over the cache's capacity
  (above 1, the whole batch cannot be resident at once and the engine preempts).
"""

from __future__ import annotations

from app.data.json_values import EngineTelemetry
from app.jobs.endpoints.generate_call import Generation


def _rate(tokens: int, seconds: float) -> float | None:
    return round(tokens / seconds, 1) if seconds > 0 else None


def batch_telemetry(generations: list[Generation], kv_cache_tokens: int | None) -> EngineTelemetry | None:
    timings = [g.timing for g in generations if g.timing is not None]
    if not timings:
        return None
    started = min(t.scheduled for t in timings)
    prefilled = max(t.first_token for t in timings)
    finishes = sorted(t.last_token for t in timings)
    ended = finishes[-1]
    prompt_tokens = sum(g.prompt_tokens for g in generations)
    completion_tokens = sum(g.completion_tokens for g in generations)
    decode_tokens = completion_tokens - sum(len(g.choices) for g in generations)
    idle_tail = ended - finishes[-2] if len(finishes) > 1 else 0.0
    span = ended - started
    return EngineTelemetry(
        prefill_seconds=round(prefilled - started, 4),
        prefill_tokens_per_second=_rate(prompt_tokens, prefilled - started),
        decode_seconds=round(ended - prefilled, 4),
        decode_tokens_per_second=_rate(decode_tokens, ended - prefilled),
        idle_tail_seconds=round(idle_tail, 4),
        idle_tail_fraction=round(idle_tail / span, 4) if span > 0 else 0.0,
        preemptions=sum(t.preemptions for t in timings),
        kv_cache_demand=round((prompt_tokens + completion_tokens) / kv_cache_tokens, 4) if kv_cache_tokens else None,
        cached_prompt_tokens=sum(g.cached_tokens for g in generations),
    )


def combine(parts: list[EngineTelemetry | None]) -> EngineTelemetry | None:
    """One record for several static batches: times, tails, preemptions and static batches
    add up, rates are weighted by their seconds, KV-cache demand is the peak. A packed
    window's record, and a job's totals."""
    reported = [p for p in parts if p is not None]
    if not reported:
        return None

    def weighted(rates: list[tuple[float | None, float]]) -> float | None:
        total = sum(seconds for _, seconds in rates)
        return round(sum((rate or 0) * seconds for rate, seconds in rates) / total, 1) if total > 0 else None

    prefill = sum(p.prefill_seconds for p in reported)
    decode = sum(p.decode_seconds for p in reported)
    idle_tail = sum(p.idle_tail_seconds for p in reported)
    demands = [p.kv_cache_demand for p in reported if p.kv_cache_demand is not None]
    return EngineTelemetry(
        prefill_seconds=round(prefill, 4),
        prefill_tokens_per_second=weighted([(p.prefill_tokens_per_second, p.prefill_seconds) for p in reported]),
        decode_seconds=round(decode, 4),
        decode_tokens_per_second=weighted([(p.decode_tokens_per_second, p.decode_seconds) for p in reported]),
        idle_tail_seconds=round(idle_tail, 4),
        idle_tail_fraction=round(idle_tail / (prefill + decode), 4) if prefill + decode > 0 else 0.0,
        preemptions=sum(p.preemptions for p in reported),
        kv_cache_demand=max(demands) if demands else None,
        static_batches=sum(p.static_batches for p in reported),
        cached_prompt_tokens=sum(p.cached_prompt_tokens for p in reported),
    )
