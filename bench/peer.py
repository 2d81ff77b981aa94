"""peer: one OpenAI batch file of chat lines through vLLM's own run-batch and
through the service's worker path, generated tokens/s compared.

run-batch runs in a child process that loads the engine once and then calls vLLM's
`run_batch` (the very function behind `python -m vllm.entrypoints.openai.run_batch`)
on the file once per run, so engine start-up counts for neither side; the time the CLI
would add for loading is reported beside it. Neither side can force outputs past EOS
(the service accepts no `ignore_eos`), so both count the tokens they really generated.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, log_file, medians, output_lengths, prompt_text
from bench.engines import engine_cli_args

CHAT_URL = "/v1/chat/completions"
WARM_UP_LINES = 64
RESULT_PREFIX = "RUN "


def chat_lines(count: int, longest: int, seed: int, model: str) -> list[dict[str, Any]]:
    lengths = output_lengths(count, longest, seed)
    return [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": CHAT_URL,
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": prompt_text(i)}],
                "max_tokens": lengths[i],
            },
        }
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_service(service: Any, lines: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """`service` is a `bench.service_overhead.ServiceBench` at the chosen batch size; the
    job at the service's defaults (length-aware packing and prefix grouping on)."""
    service.run(lines[:WARM_UP_LINES], CHAT_URL, pack_by_length=True)
    per_run = [service.run(lines, CHAT_URL, pack_by_length=True) for _ in range(runs)]
    return {"median": medians(per_run), "runs": per_run}


def run_vllm_batch(config: BenchConfig, lines: list[dict[str, Any]], model_name: str, num_seqs: int | None) -> dict:
    """vLLM's run-batch on the same file, in a child process; medians over the runs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_jsonl(folder / "in.jsonl", lines)
        warm_up = write_jsonl(folder / "warm-up.jsonl", lines[:WARM_UP_LINES])
        command = [
            sys.executable,
            "-m",
            "bench.peer",
            str(config.runs),
            str(warm_up),
            *engine_cli_args(config, num_seqs),
            "--served-model-name",
            model_name,
            "-i",
            str(source),
            "-o",
            str(folder / "out.jsonl"),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log_file("run-batch"), text=True, check=True)
        wall = time.perf_counter() - started
    reports = [
        json.loads(line[len(RESULT_PREFIX) :]) for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)
    ]
    load = next(r["load_seconds"] for r in reports if "load_seconds" in r)
    per_run = [r for r in reports if "tokens_per_second" in r]
    return {"median": medians(per_run), "runs": per_run, "engine_load_seconds": load, "child_wall_seconds": wall}


def _completion_tokens(output: Path) -> tuple[int, int]:
    tokens, failed = 0, 0
    for line in output.read_text().splitlines():
        row = json.loads(line)
        body = (row.get("response") or {}).get("body")
        if row.get("error") or not body:
            failed += 1
            continue
        tokens += int(body["usage"]["completion_tokens"])
    return tokens, failed


async def _child(runs: int, warm_up: str, argv: list[str]) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.run_batch import run_batch, validate_run_batch_args
    from vllm.usage.usage_lib import UsageContext

    args = _parse_run_batch_args(argv)
    validate_run_batch_args(args)
    started = time.perf_counter()
    async with build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER) as client:
        source, output = args.input_file, args.output_file
        args.input_file = warm_up
        await run_batch(client, args)
        print(RESULT_PREFIX + json.dumps({"load_seconds": time.perf_counter() - started}), flush=True)
        args.input_file = source
        for _ in range(runs):
            began = time.perf_counter()
            await run_batch(client, args)
            seconds = time.perf_counter() - began
            tokens, failed = _completion_tokens(Path(output))
            report = {"generated_tokens": tokens, "failed": failed, "seconds": seconds}
            print(RESULT_PREFIX + json.dumps(report | {"tokens_per_second": tokens / seconds}), flush=True)


def _parse_run_batch_args(argv: list[str]) -> Any:
    from vllm.entrypoints.launchers.run_batch import parse_args

    sys.argv = ["run_batch", *argv]
    return parse_args()


if __name__ == "__main__":
    asyncio.run(_child(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
