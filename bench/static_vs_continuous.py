"""static_vs_continuous: the same prompts and drawn output lengths as static batches through
`LLM.generate` and through vLLM's OpenAI server (continuous batching).

- Static (`run_static`, on the harness's in-process engine): one `generate` call per batch,
  the next only when the last returns; a request's latency runs from the start of its
  batch's call to its end, the moment its result exists. Overlapped: the same static
  batches entering the running engine as it frees slots (worker.overlap, the service's
  default).
- Continuous (`run_continuous`, after that engine is unloaded): vLLM's OpenAI server, sent
  the prompts by a fixed number of concurrent clients; a request's latency runs from
  sending it to its response.

Outputs ignore EOS (`ignore_eos`, a vLLM extra field over HTTP), so each reaches its drawn
length on both sides.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.common import BenchConfig, medians, output_lengths, percentile, prompt_text
from bench.engines import SERVED_NAME, openai_server

BATCH_SIZES = [1, 8, 32, 128, 512]
ALL_AT_ONCE = "all"
CONCURRENCY = [8, 32, 128]
REQUEST_TIMEOUT_SECONDS = 3600


def batch_sizes(prompts: int) -> list[int | str]:
    return [*[size for size in BATCH_SIZES if size < prompts], ALL_AT_ONCE]


def pass_figures(generated: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    """One pass's figures: what the scenario compares across modes."""
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

    from app.jobs.endpoints.completions import CompletionBody
    from app.jobs.endpoints.generate_call import GENERATE, GenerationPlan, Sampling
    from app.jobs.lines import Request
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
        window = PreparedWindow(seq=first, first_line=first, next_line=first + len(texts[chunk]), call=GENERATE)
        for index, text, n in zip(range(first, first + batch_size), texts[chunk], lengths[chunk], strict=False):
            request = Request(index, f"line-{index}", "/v1/completions", CompletionBody(prompt=text), plain=False)
            sampling = Sampling(max_tokens=n, min_tokens=n, ignore_eos=True)
            window.add(GenerationPlan(request, engine.tokenizer.encode(text), sampling))
        taken[first] = time.perf_counter()
        ready: Future[PreparedWindow] = Future()
        ready.set_result(window)
        return ready

    def record(run: WindowRun) -> Future[None]:
        latencies.extend([time.perf_counter() - taken[run.window.seq]] * len(run.window.plans))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    started = time.perf_counter()
    overlapped = OverlappedEngine(engine, DEFAULT_STATIC_BATCHES_IN_FLIGHT)
    run_windows(overlapped, StaticBatchSource(next_window), record, lambda: False)
    # ignore_eos: every output reaches its drawn length
    return pass_figures(sum(lengths), time.perf_counter() - started, latencies)


def run_static(engine: Any, config: BenchConfig) -> dict[str, Any]:
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


async def _http_pass(url: str, texts: list[str], lengths: list[int], concurrency: int) -> dict[str, float]:
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


def run_continuous(config: BenchConfig, num_seqs: int | None) -> dict[str, Any]:
    texts = [prompt_text(i) for i in range(config.prompts)]
    lengths = output_lengths(config.prompts, config.max_tokens, config.seed)
    levels = [c for c in CONCURRENCY if c <= config.prompts] or [config.prompts]
    runs: dict[str, list[dict[str, float]]] = {str(c): [] for c in levels}
    with openai_server(config, num_seqs) as url:
        asyncio.run(_http_pass(url, texts[:64], lengths[:64], 8))  # warm-up
        for _ in range(config.runs):
            for level in levels:
                runs[str(level)].append(asyncio.run(_http_pass(url, texts, lengths, level)))
    return {
        "prompts": config.prompts,
        "output_tokens_requested": sum(lengths),
        "max_num_seqs": num_seqs,
        "by_concurrency": {level: medians(per_run) for level, per_run in runs.items()},
        "runs": runs,
    }
