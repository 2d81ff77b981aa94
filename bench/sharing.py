"""sharing, small batches behind a big one: while one big batch runs on a worker, a 20-line
batch of another owner and a 20-line priority batch are created; how long each takes against
its time alone, and the big batch's tokens/s against its rate alone. Prints the figures and
writes bench/results/sharing.json.

    python -m bench.sharing [--big-lines 24000] [--max-tokens 32] [--small-lines 20] [--rounds 2]

One worker process (`python -m worker`, the service's defaults) on this machine; batches
are created through the service's own create path (upload, create_job), and their times
are the database's (created_at to completed_at). Uses DATABASE_URL if set, else an
embedded Postgres under a temporary folder.
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

from app.core.database import Database
from app.core.migrations import upgrade
from app.core.settings import Settings
from app.core.storage import LocalStore
from app.data.models import Job
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.create import JobSpec, Owner, create_job
from app.jobs.uploads import UploadLimits, store_upload
from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
from bench.common import postgres

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = RESULTS / "logs"
READY_TIMEOUT_SECONDS = 300
GOAL_EXTRA_SECONDS = 30.0  # the goal: within 30 s + 3x the batch's time alone
GOAL_TIMES_ALONE = 3.0
GOAL_BIG_RATE = 0.95


class Bench:
    def __init__(self, database_url: str, storage: Path, args: argparse.Namespace) -> None:
        self.settings = Settings(database_url=database_url, storage_url=f"file://{storage}", model=str(DEFAULT_OUTPUT))
        self.db = Database(database_url)
        self.records = Records(self.db)
        self.store = LocalStore(storage)
        self.args = args

    def create(self, prefix: str, lines: int, owner: str, priority: int = 0) -> str:
        rows = b"".join(
            json.dumps(
                {"custom_id": f"{prefix}-{i}", "prompt": f"{prefix} document {i}", "max_tokens": self.args.max_tokens}
            ).encode()
            + b"\n"
            for i in range(lines)
        )
        file = store_upload(
            self.records,
            self.store,
            io.BytesIO(rows),
            owner=owner,
            filename=f"{prefix}.jsonl",
            purpose="batch",
            limits=UploadLimits(10**10, 10**8, 10),
        )
        spec = JobSpec(input_file_id=file.id, endpoint="/v1/completions", priority=priority)
        return create_job(self.records, JobQueue(self.db), self.settings, spec, Owner(owner, scope=None)).id

    def job(self, job_id: str) -> Job:
        return self.records.get_job(job_id)

    def wait_done(self, job_id: str) -> Job:
        while (job := self.job(job_id)).status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
        return job


def seconds(job: Job) -> float:
    assert job.completed_at is not None
    return (job.completed_at - job.created_at).total_seconds()


def big_rate(job: Job) -> float:
    """The big batch's generated tokens per second from its first claim to its end."""
    assert job.completed_at is not None and job.in_progress_at is not None
    return job.completion_tokens / (job.completed_at - job.in_progress_at).total_seconds()


def measure(bench: Bench) -> dict[str, Any]:
    """`rounds` rounds, each the big batch alone, then the big batch with two small ones
    created beside it once it runs; the small batch alone before them. Medians."""
    args = bench.args
    small_alone = []
    for round_ in range(2):  # the first also warms the engine's paths up
        small_alone.append(seconds(bench.wait_done(bench.create(f"alone{round_}", args.small_lines, "b"))))
    rounds = []
    for round_ in range(args.rounds):
        big_alone = bench.wait_done(bench.create(f"big-alone{round_}", args.big_lines, "a"))
        big = bench.create(f"big{round_}", args.big_lines, "a")
        while bench.job(big).completion_tokens == 0:  # running, with its first window recorded
            time.sleep(0.05)
        other = bench.create(f"other{round_}", args.small_lines, "b")
        urgent = bench.create(f"urgent{round_}", args.small_lines, "ops", priority=50)
        other_done, urgent_done = bench.wait_done(other), bench.wait_done(urgent)
        still_running = bench.job(big).status == "in_progress"
        big_shared = bench.wait_done(big)
        rounds.append(
            {
                "small_other_owner_seconds": round(seconds(other_done), 3),
                "small_priority_seconds": round(seconds(urgent_done), 3),
                "big_still_running_when_small_ones_ended": still_running,
                "big_alone_seconds": round(seconds(big_alone), 2),
                "big_alone_tokens_per_second": round(big_rate(big_alone), 1),
                "big_shared_seconds": round(seconds(big_shared), 2),
                "big_shared_tokens_per_second": round(big_rate(big_shared), 1),
                "big_rate_shared_over_alone": round(big_rate(big_shared) / big_rate(big_alone), 3),
            }
        )
    alone = min(small_alone)
    result: dict[str, Any] = {
        "small_alone_seconds": round(alone, 3),
        "small_goal_seconds": round(GOAL_EXTRA_SECONDS + GOAL_TIMES_ALONE * alone, 3),
    }
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        result[name] = all(values) if isinstance(values[0], bool) else statistics.median(values)
    return {**result, "rounds": rounds, "settings": vars(args)}


def run(config: Any) -> dict[str, Any]:
    """`make bench`'s scenario: this module as a child process on a fresh database."""
    from bench.common import child_env, fresh_database, log_file, read_result

    with fresh_database(config.database_url, "bench_sharing") as url:
        command = [sys.executable, "-m", "bench.sharing"]
        subprocess.run(
            command, env=child_env(DATABASE_URL=url), stdout=log_file("sharing"), stderr=subprocess.STDOUT, check=True
        )
    result = read_result("sharing")
    assert result is not None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-lines", type=int, default=24000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (big alone, big with small ones beside)")
    parser.add_argument("--small-lines", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    ensure_demo_model(DEFAULT_OUTPUT)
    LOGS.mkdir(parents=True, exist_ok=True)
    with postgres(None) as database_url, tempfile.TemporaryDirectory() as tmp:
        upgrade(database_url)
        storage = Path(tmp) / "storage"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "STORAGE_URL": f"file://{storage}",
            "MODEL": str(DEFAULT_OUTPUT),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=env,
            stdout=open(LOGS / "sharing-worker.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        bench = Bench(database_url, storage, args)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not bench.records.ready_workers(60):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not become ready; see {LOGS / 'sharing-worker.log'}")
                time.sleep(0.5)
            result = measure(bench)
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            bench.db.dispose()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sharing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"small batches behind a big one: {result['small_other_owner_seconds']:.1f} s (other owner) and "
        f"{result['small_priority_seconds']:.1f} s (priority), goal <= {result['small_goal_seconds']:.1f} s; "
        f"big batch's rate shared / alone: {result['big_rate_shared_over_alone']:.3f} (goal >= {GOAL_BIG_RATE})"
    )


if __name__ == "__main__":
    main()
