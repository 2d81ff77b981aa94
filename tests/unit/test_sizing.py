"""A job's batch size, when it gives none, follows the engine that runs it."""

from __future__ import annotations

from app.data.json_values import JobEstimate
from tests.fakes import FakeEngine
from worker.sizing import fit_batch_size


def estimate(lines: int, prompt_tokens: int, requested_output_tokens: int) -> JobEstimate:
    return JobEstimate(
        lines=lines,
        runnable_lines=lines,
        prompt_tokens=prompt_tokens,
        requested_output_tokens=requested_output_tokens,
        eta_seconds=None,
        basis="no history",
        ready_workers=0,
        batch_size=None,
    )


def test_short_lines_fill_the_engines_sequence_slots() -> None:
    engine = FakeEngine(max_num_seqs=256)
    engine.kv_cache_tokens = 500_000
    size, basis = fit_batch_size(engine, estimate(1000, 30_000, 64_000))  # 94 tokens a line
    assert size == 256
    assert "max_num_seqs (256)" in basis and "holds 5,319 lines" in basis


def test_long_lines_are_cut_to_what_the_kv_cache_holds_at_once() -> None:
    engine = FakeEngine(max_num_seqs=256)
    engine.kv_cache_tokens = 100_000
    size, basis = fit_batch_size(engine, estimate(100, 2_400, 102_400))  # 1,048 tokens a line
    assert size == 95
    assert "KV cache (100,000 tokens) holds 95 lines" in basis and "under max_num_seqs (256)" in basis


def test_without_counts_or_a_kv_size_the_sequence_slots_decide() -> None:
    engine = FakeEngine(max_num_seqs=128)
    engine.kv_cache_tokens = 100_000
    assert fit_batch_size(engine, None) == (
        128,
        "the engine's max_num_seqs (128); the job's lengths are not counted yet",
    )
    engine.kv_cache_tokens = None
    size, basis = fit_batch_size(engine, estimate(10, 10, 10))
    assert size == 128 and "no KV cache size" in basis
