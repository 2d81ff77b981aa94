"""deployed_shape: the service as users run it against raw `LLM.generate`, interleaved.

The service side is `make run`'s shape: the API (uvicorn) and one worker as separate
processes on a Postgres server, the job uploaded, created and polled over HTTP once a
second like a client. The raw side is `LLM.generate` with the worker's engine settings
on the same prompts, in static batches of the same size, in its own process. Each run
does one of each, one engine at a time; figures are medians.

    python -m bench.deployed_shape [--lines 4096] [--max-tokens 32] [--batch-size 256] [--runs 2]

Goals (issue 14): generation tokens/s of the service >= 0.97 of raw, end to end (the
client's clock, from upload to seeing `completed`) >= 0.93 of raw's wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS, free_port, fresh_database, log_file, postgres, write_result
from bench.service_overhead import prompts, raw_run

POLL_SECONDS = 1.0
READY_SECONDS = 600


def raw_side(model: str, lines: int, max_tokens: int, batch_size: int, off_compute: bool) -> dict[str, float]:
    """Runs in a child process: loads the worker's engine, times `generate` per static batch.
    `off_compute`: this process's threads kept off the engine's compute cores, as the worker
    keeps its own (`worker.affinity`), so that gain is not counted as the service's."""
    from app.core.settings import Settings
    from worker.affinity import keep_off_compute_cores
    from worker.engine import VllmEngine, has_cuda

    engine = VllmEngine(Settings(model=model))
    if off_compute and not has_cuda():
        keep_off_compute_cores()
    try:
        raw_run(engine, prompts(64, max_tokens), batch_size)  # warm-up
        return raw_run(engine, prompts(lines, max_tokens), batch_size)
    finally:
        engine.shutdown()


def service_side(database_url: str, model: str, lines: int, max_tokens: int, batch_size: int) -> dict[str, float]:
    """API and worker as processes; the job sent and polled over HTTP."""
    options = {"batch_size": batch_size}
    done = run_job(database_url, model, prompts(lines, max_tokens), prompts(64, max_tokens), "/v1/completions", options)
    return figures(done)


def figures(done: dict[str, Any]) -> dict[str, float]:
    """A finished job's figures, from its batch object and the client's clock."""
    generated = done["usage"]["output_tokens"]
    return {
        "generated_tokens": generated,
        "generate_seconds": done["throughput"]["generate_seconds"],
        "tokens_per_second": done["throughput"]["generation_tokens_per_second"],
        "end_to_end_tokens_per_second": generated / done["client_seconds"],
    }


def run_job(
    database_url: str,
    model: str,
    rows: list[dict[str, Any]],
    warm_up: list[dict[str, Any]],
    endpoint: str,
    options: dict[str, Any],
    long_poll: bool = False,
) -> dict[str, Any]:
    """`make run`'s shape: the API and a worker as processes on `database_url`; a warm-up job,
    then `rows` uploaded, created with `options` and polled once a second over HTTP (with
    `long_poll`, as the CLI's `--wait` polls: `?wait=1`, answered when the status changes).
    The finished batch object, with `client_seconds` from the upload to seeing it completed."""
    return run_jobs(database_url, model, [(rows, options)], warm_up, endpoint, long_poll)[0]


def run_jobs(
    database_url: str,
    model: str,
    jobs: list[tuple[list[dict[str, Any]], dict[str, Any]]],
    warm_up: list[dict[str, Any]],
    endpoint: str,
    long_poll: bool = False,
) -> list[dict[str, Any]]:
    """As run_job, with one API and one worker (one engine start) for every job in turn."""
    from app.core.database import Database
    from app.data.keys import create_key
    from app.data.records import Records

    with tempfile.TemporaryDirectory(prefix="bench-deployed-") as storage:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "STORAGE_URL": f"file://{storage}",
            "MODEL": model,
            "PORT": str(port),
        }
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)],
            env=env,
            stdout=log_file("deployed-api"),
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=env, stdout=log_file("deployed-worker"), stderr=subprocess.STDOUT
        )
        try:
            db = Database(database_url)
            key = create_key(Records(db), "bench")[1]
            db.dispose()
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
                _wait_ready(http, worker)
                _wait_done(http, _submit(http, warm_up, endpoint, jobs[0][1]), long_poll)
                found = []
                for rows, options in jobs:
                    started = time.perf_counter()
                    done = _wait_done(http, _submit(http, rows, endpoint, options), long_poll)
                    done["client_seconds"] = time.perf_counter() - started
                    found.append(done)
        finally:
            for process in (worker, api):
                process.terminate()
            for process in (worker, api):
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    return found


def _wait_ready(http: httpx.Client, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker exited; see bench/results/logs/deployed-worker.log"
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("no worker became ready")


def _submit(http: httpx.Client, rows: list[dict[str, Any]], endpoint: str, options: dict[str, Any]) -> str:
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    file = http.post("/v1/files", files={"file": ("bench.jsonl", io.BytesIO(data))}, data={"purpose": "batch"})
    file.raise_for_status()
    body = {"input_file_id": file.json()["id"], "endpoint": endpoint, **options}
    batch = http.post("/v1/batches", json=body)
    batch.raise_for_status()
    return str(batch.json()["id"])


def _wait_done(http: httpx.Client, batch_id: str, long_poll: bool = False) -> dict[str, Any]:
    params = {"wait": POLL_SECONDS} if long_poll else {}
    while True:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}", params=params).json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            assert batch["status"] == "completed", batch
            return batch
        if not long_poll:
            time.sleep(POLL_SECONDS)


DEPLOYED_LINES, DEPLOYED_MAX_TOKENS, DEPLOYED_BATCH_SIZE = 4096, 32, 256


def run(config: Any) -> dict[str, Any]:
    """The scenario as `make bench` runs it (the issue's job: 4,096 lines, 32 tokens, batch size 256)."""
    return measure(
        config.model, DEPLOYED_LINES, DEPLOYED_MAX_TOKENS, DEPLOYED_BATCH_SIZE, config.runs, config.database_url
    )


def measure(
    model: str, lines: int, max_tokens: int, batch_size: int, runs_wanted: int, database_url: str | None
) -> dict[str, Any]:
    runs = []
    with postgres(database_url) as server:
        for run_number in range(runs_wanted):
            sides = {}
            for side in ("raw", "raw_off_compute"):
                raw = subprocess.run(
                    [sys.executable, "-m", "bench.deployed_shape", side, "--model", model, "--lines", str(lines),
                     "--max-tokens", str(max_tokens), "--batch-size", str(batch_size)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                sides[side] = json.loads(raw.stdout.strip().splitlines()[-1])
            with fresh_database(server, f"bench_deployed_{run_number}") as url:
                service = service_side(url, model, lines, max_tokens, batch_size)
            runs.append({**sides, "service": service})
            print(f"run {run_number}: raw {sides['raw']['tokens_per_second']:.0f} tok/s, "
                  f"raw off compute cores {sides['raw_off_compute']['tokens_per_second']:.0f}, "
                  f"service {service['tokens_per_second']:.0f} tok/s (generate), "
                  f"{service['end_to_end_tokens_per_second']:.0f} tok/s end to end", flush=True)  # fmt: skip
    # Each service run against the raw run just before it; the ratio is the median pair.
    pairs = [r["service"]["tokens_per_second"] / r["raw"]["tokens_per_second"] for r in runs]
    end_to_end = statistics.median(
        r["service"]["end_to_end_tokens_per_second"] / r["raw"]["end_to_end_tokens_per_second"] for r in runs
    )
    # Against raw with its threads kept off the compute cores too: what the service's own
    # path costs, once the placement both can have is taken out.
    to_placed = statistics.median(
        r["service"]["tokens_per_second"] / r["raw_off_compute"]["tokens_per_second"] for r in runs
    )
    settings = {"lines": lines, "max_tokens": max_tokens, "batch_size": batch_size}
    return {
        "settings": settings,
        "runs": runs,
        "generation_ratio": statistics.median(pairs),
        "generation_pairs": pairs,
        "end_to_end_ratio": end_to_end,
        "generation_ratio_to_raw_off_compute": to_placed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "side", nargs="?", choices=["raw", "raw_off_compute"], help="(internal) run one raw side and print it"
    )
    parser.add_argument("--model", default=str(Path("var/models/demo-llama").resolve()))
    parser.add_argument("--lines", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.side:
        off_compute = args.side == "raw_off_compute"
        print(json.dumps(raw_side(args.model, args.lines, args.max_tokens, args.batch_size, off_compute)))
        return
    result = measure(args.model, args.lines, args.max_tokens, args.batch_size, args.runs, args.database_url)
    write_result("deployed_shape", result)
    generation, end_to_end = result["generation_ratio"], result["end_to_end_ratio"]
    print(f"service / raw: generation {generation:.3f} (goal 0.97), end to end {end_to_end:.3f} (goal 0.93)")
    print(f"written to {RESULTS / 'deployed_shape.json'}")


if __name__ == "__main__":
    main()
