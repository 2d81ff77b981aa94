"""scale_out: one job on one worker against the same job on two workers, each worker's
engine pinned to its own core, beside the machine's own ceiling for the same work (raw
engines pinned one per core, `bench.machine_scaling`). Both parts write into
bench/results/scale_out.json (`machine_scaling` and `scale_out`, the other part kept).

    python -m bench.scale_out [--lines 8000] [--max-tokens 32] [--batch-size N] [--shard-size N]

runs the workers' part alone and prints it; at the service's defaults unless told (batch
size fitted to the engine, SHARD_SIZE's default). `python -m bench --only scale_out` runs
both parts as child processes (each starts its own engines). Both pin engines to CPU cores
and use the demo model, so the harness runs them only on the CPU engine with the demo
model; elsewhere the result records why it was skipped.

Uses DATABASE_URL if set, else an embedded Postgres under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.database import Database
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.core.storage import LocalStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.create import JobSpec, Owner, create_job
from app.jobs.uploads import UploadLimits, store_upload
from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
from bench.common import (
    LOGS,
    BenchConfig,
    child_env,
    fresh_database,
    log_file,
    postgres,
    read_result,
    write_part,
)

READY_TIMEOUT_SECONDS = 300
MIN_CORES = 2


def make_job(records: Records, store: LocalStore, settings: Settings, lines: int, max_tokens: int) -> str:
    import io

    rows = b"".join(
        json.dumps({"custom_id": f"r{i}", "prompt": f"benchmark document {i}", "max_tokens": max_tokens}).encode()
        + b"\n"
        for i in range(lines)
    )
    file = store_upload(
        records,
        store,
        io.BytesIO(rows),
        owner="bench",
        filename="bench.jsonl",
        purpose="batch",
        limits=UploadLimits(10**10, 10**8, 10),
    )
    spec = JobSpec(input_file_id=file.id, endpoint="/v1/completions")
    batch = create_job(records, JobQueue(records.db), settings, spec, Owner("bench", scope=None))
    return batch.id


def pin_to(core: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {core})


def run_workers(workers: int, args: argparse.Namespace, database_url: str, storage: Path) -> dict[str, float]:
    settings = Settings(
        database_url=database_url,
        storage_url=f"file://{storage}",
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        model=str(DEFAULT_OUTPUT),
    )
    db = Database(database_url)
    records = Records(db)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"file://{storage}",
        "SHARD_SIZE": str(args.shard_size),
        "POLL_SECONDS": "0.2",
        "MODEL": str(DEFAULT_OUTPUT),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env={**env, "VLLM_CPU_OMP_THREADS_BIND": str(core)},
            preexec_fn=pin_to(core),  # the whole worker (main, engine core, compute) on its core
            stdout=open(LOGS / f"worker-{workers}-{core}.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for core in range(workers)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while len(records.ready_workers(60)) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not become ready")
            time.sleep(0.5)
        batch_id = make_job(records, LocalStore(storage), settings, args.lines, args.max_tokens)
        started = time.monotonic()  # from the moment the job is queued to the moment it is completed
        while records.get_job(batch_id).status != "completed":
            time.sleep(0.1)
        seconds = time.monotonic() - started
        batch = records.get_job(batch_id)
        return {
            "workers": workers,
            "seconds": round(seconds, 2),
            "completion_tokens": batch.completion_tokens,
            "tokens_per_second": round(batch.completion_tokens / seconds, 1),
            "workers_that_ran_batches": records.worker_count(batch_id),
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        db.dispose()


def _skip_reason(config: BenchConfig) -> str | None:
    from worker.engine import has_cuda

    if has_cuda():
        return "pins engines to CPU cores; not meaningful on a GPU machine"
    if Path(config.model).resolve() != DEFAULT_OUTPUT.resolve():
        return "runs on the demo model only"
    if (os.cpu_count() or 1) < MIN_CORES:
        return "needs two cores"
    return None


def _child(module: str, args: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", f"bench.{module}", *args]
    subprocess.run(command, env=env, stdout=log_file(module), stderr=subprocess.STDOUT, check=True)


def run(config: BenchConfig) -> dict[str, Any]:
    """The scenario as `python -m bench` runs it: both parts as child processes."""
    reason = _skip_reason(config)
    if reason:
        return {"skipped": reason}
    _child("machine_scaling", [], child_env())
    with fresh_database(config.database_url, "bench_scale_out") as url:
        _child("scale_out", ["--lines", str(config.scale_out_lines)], child_env(DATABASE_URL=url))
    result = read_result("scale_out") or {}
    return {"machine_scaling": result["machine_scaling"], "scale_out": result["scale_out"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="default: fitted to the engine")
    parser.add_argument("--shard-size", type=int, default=Settings().shard_size, help="default: SHARD_SIZE's")
    args = parser.parse_args()

    ensure_demo_model(DEFAULT_OUTPUT)
    LOGS.mkdir(parents=True, exist_ok=True)
    with postgres(None) as database_url, tempfile.TemporaryDirectory() as tmp:
        upgrade(database_url)
        one = run_workers(1, args, database_url, Path(tmp) / "one")
        two = run_workers(2, args, database_url, Path(tmp) / "two")
    result = {
        "one_worker": one,
        "two_workers": two,
        "ratio": round(two["seconds"] / one["seconds"], 3),
        "settings": vars(args),
    }
    write_part("scale_out", "scale_out", result)
    print(json.dumps(result, indent=2))
    print(f"two workers took {result['ratio']:.2f} of one worker's time (goal: at most 0.60)")


if __name__ == "__main__":
    main()
