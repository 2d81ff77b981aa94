"""service_overhead: the same prompts through raw `LLM.generate` at a batch size and as
a job through the service's worker (storage, Postgres, parsing, tokenizing, writing),
with one engine in one process, so the ratio is the service's own cost.

    python -m bench.service_overhead [--lines 2048] [--batch-size 256] [--max-tokens 32] [--runs 3]

(`python -m bench` runs it as one of its scenarios.) Prints the figures and writes
bench/results/service_overhead.json. Uses DATABASE_URL if
set, else an embedded Postgres in a temporary folder. Goals: generation throughput at
least 0.97 of raw, end to end at least 0.90.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS = 32


def prompts(lines: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"r{i}", "prompt": f"benchmark document number {i}", "max_tokens": max_tokens}
        for i in range(lines)
    ]


def raw_run(engine: Any, rows: list[dict[str, Any]], batch_size: int) -> dict[str, float]:
    """`LLM.generate` on each static batch, nothing else. The prompts are tokenized before
    the clock starts and handed over as token ids, as the worker hands them (it tokenizes
    on its prepare thread while the previous batch generates), so the raw side is the
    engine's own ceiling, not the engine plus tokenizing."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = engine.llm.get_tokenizer()
    token_ids = [TokensPrompt(prompt_token_ids=tokenizer.encode(row["prompt"])) for row in rows]
    generated, seconds = 0, 0.0
    wall_start = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        params = [SamplingParams(max_tokens=row["max_tokens"]) for row in chunk]
        began = time.perf_counter()
        outputs = engine.llm.generate(token_ids[start : start + batch_size], params, use_tqdm=False)
        seconds += time.perf_counter() - began
        generated += sum(len(o.outputs[0].token_ids) for o in outputs)
    wall = time.perf_counter() - wall_start
    return {
        "generated_tokens": generated,
        "generate_seconds": seconds,
        "tokens_per_second": generated / seconds,
        "end_to_end_tokens_per_second": generated / wall,
    }


def service_run(
    engine: Any,
    records: Any,
    store: Any,
    settings: Any,
    rows: list[dict[str, Any]],
    endpoint: str = "/v1/completions",
    pack_by_length: bool = False,
    batching: Literal["overlapped", "strict"] = "overlapped",
    regroup: bool = False,
) -> dict[str, float]:
    """Upload, create, run with the worker loop, finalize; timed from creation to completed.
    `regroup`: the create call orders the lines by prompt prefix as the API does
    (app.jobs.run_order, at the settings' regroup distance), inside the timed span."""
    from app.data.queue import JobQueue
    from app.jobs.create import JobSpec, Owner, create_job
    from app.jobs.uploads import UploadLimits, store_upload
    from worker.loop import WorkerLoop

    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    file = store_upload(
        records,
        store,
        io.BytesIO(data),
        owner="bench",
        filename="bench.jsonl",
        purpose="batch",
        limits=UploadLimits(10**11, 10**9, 10),
    )
    queue = JobQueue(records.db)
    loop = WorkerLoop(engine, records, queue, store, lease_seconds=600, heartbeat_seconds=30, poll_seconds=1)
    loop.register()
    started = time.perf_counter()
    spec = JobSpec(input_file_id=file.id, endpoint=endpoint, pack_by_length=pack_by_length, batching=batching)
    order = None
    if regroup:
        from app.jobs.run_order import write_run_input

        def order(job_id: str, key: str, url: str, count: int) -> Any:
            return write_run_input(store, job_id, key, url, count, settings.regroup_distance_lines)

    batch = create_job(records, queue, settings, spec, Owner("bench", scope=None), order=order)
    while loop.run_once():
        pass
    wall = time.perf_counter() - started
    done = records.get_job(batch.id)
    assert done.status == "completed" and done.request_completed == len(rows), done.status
    return {
        "generated_tokens": done.completion_tokens,
        "generate_seconds": done.generate_seconds,
        "tokens_per_second": done.completion_tokens / done.generate_seconds,
        "end_to_end_tokens_per_second": done.completion_tokens / wall,
        "cached_prompt_tokens": done.cached_tokens,
        "prompt_tokens": done.prompt_tokens,
    }


class ServiceBench:
    """The worker's path with an engine already loaded: a database and a storage folder."""

    def __init__(self, engine: Any, config: Any, database_url: str, storage: Path, batch_size: int | None) -> None:
        from app.core.database import Database
        from app.core.storage import LocalStore
        from app.data.records import Records
        from bench.engines import engine_settings

        self.engine = engine
        self.db = Database(database_url)
        self.records = Records(self.db)
        self.store = LocalStore(storage)
        self.settings = engine_settings(config, database_url=database_url, batch_size=batch_size, shard_size=10**9)

    def run(
        self,
        rows: list[dict[str, Any]],
        endpoint: str = "/v1/completions",
        pack_by_length: bool = False,
        batching: Literal["overlapped", "strict"] = "overlapped",
    ) -> dict[str, float]:
        return service_run(
            self.engine, self.records, self.store, self.settings, rows, endpoint, pack_by_length, batching
        )

    def close(self) -> None:
        self.db.dispose()


def measure(
    engine: Any,
    config: Any,
    database_url: str,
    storage: Path,
    lines: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> dict[str, Any]:
    """Raw and service runs interleaved, so drift hits both alike; medians and their ratios."""
    service = ServiceBench(engine, config, database_url, storage, batch_size)
    rows = prompts(lines, max_tokens)
    raw_run(engine, rows[:batch_size], batch_size)  # warm-up
    raw, through_service = [], []
    try:
        for _ in range(config.runs):
            raw.append(raw_run(engine, rows, batch_size))
            through_service.append(service.run(rows))
    finally:
        service.close()

    def median(per_run: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in per_run), 1)

    result: dict[str, Any] = {
        "lines": lines,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "raw_generate_tokens_per_second": median(raw, "tokens_per_second"),
        "raw_end_to_end_tokens_per_second": median(raw, "end_to_end_tokens_per_second"),
        "service_generation_tokens_per_second": median(through_service, "tokens_per_second"),
        "service_end_to_end_tokens_per_second": median(through_service, "end_to_end_tokens_per_second"),
        "runs": {"raw": raw, "service": through_service},
    }
    # Each service run against the raw run just before it (drift on a shared machine moves
    # both of a pair alike), then the median of those ratios.
    for ratio, key in (("generation_ratio", "tokens_per_second"), ("end_to_end_ratio", "end_to_end_tokens_per_second")):
        result[ratio] = round(statistics.median(s[key] / r[key] for r, s in zip(raw, through_service, strict=True)), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the demo model")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()

    from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
    from bench.common import BenchConfig, postgres, write_result
    from bench.engines import load_engine

    model = args.model or str(ensure_demo_model(DEFAULT_OUTPUT))
    config = BenchConfig(model=model, tensor_parallel_size=args.tensor_parallel_size, runs=args.runs)
    with postgres(None) as database_url, tempfile.TemporaryDirectory() as tmp:
        from app.core.migrations import upgrade

        upgrade(database_url)
        engine = load_engine(config)
        try:
            result = measure(
                engine, config, database_url, Path(tmp) / "storage", args.lines, args.batch_size, args.max_tokens
            )
        finally:
            engine.shutdown()
    result["settings"] = vars(args) | {"model": model}
    write_result("service_overhead", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(
        f"service/raw: generation {result['generation_ratio']:.3f} (goal 0.97), "
        f"end to end {result['end_to_end_ratio']:.3f} (goal 0.90)"
    )


if __name__ == "__main__":
    main()
