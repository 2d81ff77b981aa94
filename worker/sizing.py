"""A job's batch size when it gives none: what the engine holding it can run at once.

A static batch larger than the engine's `max_num_seqs` only waits in its queue, and one
whose sequences cannot all hold their KV cache at once gets preempted; smaller than both,
the engine idles slots a static batch could fill. So the size is `max_num_seqs`, cut to the
lines whose prompt and requested output fit in the KV cache together, with the job's
lengths from its estimate (counted when it was queued). Lines ask for `max_tokens`, and
most end sooner: the KV cut errs on the side of smaller static batches, which overlapping
(worker.overlap) keeps the engine full with anyway.
"""

from __future__ import annotations

from app.data.json_values import JobEstimate
from worker.engine import Engine


def fit_batch_size(engine: Engine, estimate: JobEstimate | None) -> tuple[int, str]:
    """(the batch size, why), for a job with `estimate` (None while it is not counted yet)."""
    slots = engine.max_num_seqs
    basis = f"the engine's max_num_seqs ({slots})"
    if not engine.kv_cache_tokens:
        return slots, basis + "; the engine reports no KV cache size"
    if estimate is None or not estimate.runnable_lines:
        return slots, basis + "; the job's lengths are not counted yet"
    per_line = (estimate.prompt_tokens + estimate.requested_output_tokens) / estimate.runnable_lines
    fits = max(1, int(engine.kv_cache_tokens // max(per_line, 1.0)))
    if fits >= slots:
        return slots, f"{basis}; its KV cache ({engine.kv_cache_tokens:,} tokens) holds {fits:,} lines of this job"
    return fits, (
        f"its KV cache ({engine.kv_cache_tokens:,} tokens) holds {fits:,} lines of this job "
        f"({per_line:,.0f} tokens each: prompt and max_tokens), under max_num_seqs ({slots})"
    )
