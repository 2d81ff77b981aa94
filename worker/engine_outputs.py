"""A vLLM `RequestOutput` as this service's `Generation`: texts, lengths, logprobs, timings."""

from __future__ import annotations

from typing import Any

from app.jobs.endpoints.generate_call import Choice, Generation, RequestTiming, TokenLogprob


def generation(out: Any, top_logprobs: int | None, tokenizer: Any) -> Generation:
    """One finished request; `top_logprobs` is what its line asked for (None: no logprobs)."""
    return Generation(
        prompt_tokens=len(out.prompt_token_ids or []),
        choices=[
            Choice(
                text=choice.text,
                completion_tokens=len(choice.token_ids),
                finish_reason=choice.finish_reason or "stop",
                logprobs=_logprobs(choice, top_logprobs, tokenizer),
            )
            for choice in out.outputs
        ],
        timing=_timing(out.metrics),
        cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),
    )


def _logprobs(choice: Any, top_n: int | None, tokenizer: Any) -> list[TokenLogprob] | None:
    if top_n is None or choice.logprobs is None:
        return None
    tokens = []
    for token_id, candidates in zip(choice.token_ids, choice.logprobs, strict=False):
        chosen = candidates[token_id]
        ranked = sorted(
            (c for c in candidates.values() if c.rank is not None and c.rank <= top_n), key=lambda c: c.rank
        )
        decoded = chosen.decoded_token
        tokens.append(
            TokenLogprob(
                token=decoded if decoded is not None else str(tokenizer.decode([token_id])),
                logprob=float(chosen.logprob),
                top=[(c.decoded_token or "", float(c.logprob)) for c in ranked],
            )
        )
    return tokens


def _timing(stats: Any) -> RequestTiming | None:
    """vLLM's per-request stats (present when stats logging is on)."""
    if stats is None or not getattr(stats, "first_token_ts", 0):
        return None
    return RequestTiming(
        scheduled=float(stats.scheduled_ts),
        first_token=float(stats.first_token_ts),
        last_token=float(stats.last_token_ts),
        preemptions=int(stats.num_preemptions),
    )
