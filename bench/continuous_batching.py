"""Scenario 1b: the same prompts and lengths through vLLM's OpenAI server (continuous
batching), sent by a fixed number of concurrent clients.

A request's latency runs from sending it to its response. `ignore_eos` (a vLLM extra
field) makes each output reach its drawn length, as in the static runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.common import BenchConfig, medians, output_lengths, percentile, prompt_text
from bench.engines import SERVED_NAME, openai_server

CONCURRENCY = [8, 32, 128]
REQUEST_TIMEOUT_SECONDS = 3600


async def _one_pass(url: str, texts: list[str], lengths: list[int], concurrency: int) -> dict[str, float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(texts)):
        queue.put_nowait(index)
    latencies: list[float] = []
    generated = 0
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal generated, errors
        while not queue.empty():
            index = queue.get_nowait()
            body = {
                "model": SERVED_NAME,
                "prompt": texts[index],
                "max_tokens": lengths[index],
                "min_tokens": lengths[index],
                "ignore_eos": True,
            }
            began = time.perf_counter()
            response = await http.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - began)
            if response.status_code != 200:
                errors += 1
                continue
            generated += int(response.json()["usage"]["completion_tokens"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        total = time.perf_counter() - started
    return {
        "generated_tokens": generated,
        "seconds": total,
        "tokens_per_second": generated / total,
        "latency_p50_seconds": percentile(latencies, 0.50),
        "latency_p99_seconds": percentile(latencies, 0.99),
        "errors": errors,
    }


def run(config: BenchConfig, num_seqs: int | None) -> dict[str, Any]:
    texts = [prompt_text(i) for i in range(config.prompts)]
    lengths = output_lengths(config.prompts, config.max_tokens, config.seed)
    levels = [c for c in CONCURRENCY if c <= config.prompts] or [config.prompts]
    runs: dict[str, list[dict[str, float]]] = {str(c): [] for c in levels}
    with openai_server(config, num_seqs) as url:
        asyncio.run(_one_pass(url, texts[:64], lengths[:64], 8))  # warm-up
        for _ in range(config.runs):
            for level in levels:
                runs[str(level)].append(asyncio.run(_one_pass(url, texts, lengths, level)))
    return {
        "prompts": config.prompts,
        "output_tokens_requested": sum(lengths),
        "max_num_seqs": num_seqs,
        "by_concurrency": {level: medians(per_run) for level, per_run in runs.items()},
        "runs": runs,
    }
