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
    total = time.perf_counter() - started
    return {
        "generated_tokens": generated,
        "seconds": total,
        "tokens_per_second": generated / total,
        "latency_p50_seconds": percentile(latencies, 0.50),
        "latency_p99_seconds": percentile(latencies, 0.99),
    }


def run(engine: Any, config: BenchConfig) -> dict[str, Any]:
    texts = [prompt_text(i) for i in range(config.prompts)]
    lengths = output_lengths(config.prompts, config.max_tokens, config.seed)
    sizes = batch_sizes(config.prompts)
    one_pass(engine, texts[:64], lengths[:64], 64)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {str(size): [] for size in sizes}
    for _ in range(config.runs):  # the sizes interleaved in each run, so drift hits them alike
        for size in sizes:
            runs[str(size)].append(one_pass(engine, texts, lengths, len(texts) if size == ALL_AT_ONCE else int(size)))
    return {
        "prompts": config.prompts,
        "output_tokens_requested": sum(lengths),
        "max_tokens_range": [min(lengths), max(lengths)],
        "by_batch_size": {size: medians(per_run) for size, per_run in runs.items()},
        "runs": runs,
    }
