"""Scenario 1a: the prompts as static batches through `LLM.generate`, one call per batch,
the next call only when the last returns (what the service's worker does).

A request's latency runs from the start of its batch's `generate` call to its end: the
moment its result exists. Outputs ignore EOS, so each reaches its drawn length.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchConfig, medians, output_lengths, percentile, prompt_text

BATCH_SIZES = [1, 8, 32, 128, 512]
ALL_AT_ONCE = "all"


def batch_sizes(prompts: int) -> list[int | str]:
    return [*[size for size in BATCH_SIZES if size < prompts], ALL_AT_ONCE]


def pass_figures(generated: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    """One pass's figures: what scenario 1 compares across modes."""
    return {
        "generated_tokens": generated,
        "seconds": seconds,
        "tokens_per_second": generated / seconds,
        "latency_p50_seconds": percentile(latencies, 0.50),
        "latency_p99_seconds": percentile(latencies, 0.99),
    }


def one_pass(engine: Any, texts: list[str], lengths: list[int], batch_size: int) -> dict[str, float]:
    from vllm import SamplingParams

    latencies: list[float] = []
    generated = 0
    started = time.perf_counter()
    for first in range(0, len(texts), batch_size):
        chunk = slice(first, first + batch_size)
        params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True) for n in lengths[chunk]]
        began = time.perf_counter()
        outputs = engine.llm.generate(texts[chunk], params, use_tqdm=False)
        seconds = time.perf_counter() - began
        latencies += [seconds] * len(outputs)
        generated += sum(len(out.outputs[0].token_ids) for out in outputs)
    return pass_figures(generated, time.perf_counter() - started, latencies)


def overlapped_pass(engine: Any, texts: list[str], lengths: list[int], batch_size: int) -> dict[str, float]:
    """The same static batches overlapped in the engine (worker.overlap, the service's
    default): the next enters while the last drains. A request's latency runs from its
    static batch entering the engine to its window being handed back."""
    from concurrent.futures import Future

    from app.jobs.endpoints.base import Sampling
    from worker.overlap import OverlappedEngine, StaticBatchSource, WindowRun, run_windows
    from worker.shard_runner import DEFAULT_STATIC_BATCHES_IN_FLIGHT
    from worker.windows import PreparedWindow

    starts = iter(range(0, len(texts), batch_size))
    taken: dict[int, float] = {}
    latencies: list[float] = []

    def next_window() -> Future[PreparedWindow] | None:
        first = next(starts, None)
        if first is None:
            return None
        chunk = slice(first, first + batch_size)
        window = PreparedWindow(seq=first, first_line=first, next_line=first + len(texts[chunk]))
        window.prompts = [engine.tokenizer.encode(text) for text in texts[chunk]]
        window.sampling = [Sampling(max_tokens=n, min_tokens=n, ignore_eos=True) for n in lengths[chunk]]
        taken[first] = time.perf_counter()
        ready: Future[PreparedWindow] = Future()
        ready.set_result(window)
        return ready

    def record(run: WindowRun) -> Future[None]:
        latencies.extend([time.perf_counter() - taken[run.window.seq]] * len(run.window.prompts))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    started = time.perf_counter()
    overlapped = OverlappedEngine(engine, DEFAULT_STATIC_BATCHES_IN_FLIGHT)
    run_windows(overlapped, StaticBatchSource(next_window), record, lambda: False)
    # ignore_eos: every output reaches its drawn length
    return pass_figures(sum(lengths), time.perf_counter() - started, latencies)


def run(engine: Any, config: BenchConfig) -> dict[str, Any]:
    texts = [prompt_text(i) for i in range(config.prompts)]
    lengths = output_lengths(config.prompts, config.max_tokens, config.seed)
    sizes = batch_sizes(config.prompts)
    one_pass(engine, texts[:64], lengths[:64], 64)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {str(size): [] for size in sizes}
    overlapped: dict[str, list[dict[str, float]]] = {str(size): [] for size in sizes if size != ALL_AT_ONCE}
    for _ in range(config.runs):  # the sizes interleaved in each run, so drift hits them alike
        for size in sizes:
            runs[str(size)].append(one_pass(engine, texts, lengths, len(texts) if size == ALL_AT_ONCE else int(size)))
            if size != ALL_AT_ONCE:
                overlapped[str(size)].append(overlapped_pass(engine, texts, lengths, int(size)))
    return {
        "by_batch_size_overlapped": {size: medians(per_run) for size, per_run in overlapped.items()},
        "prompts": config.prompts,
        "output_tokens_requested": sum(lengths),
        "max_tokens_range": [min(lengths), max(lengths)],
        "by_batch_size": {size: medians(per_run) for size, per_run in runs.items()},
        "runs": runs,
    }
