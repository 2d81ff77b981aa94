"""fleet, a fleet against one Postgres: many simulated workers claim, record and close shards
through the service's own queue statements (`JobQueue.claim_shard`, `record_window`,
`finish_shard`), with an engine stand-in that takes a fixed time per static batch. Prints
the figures and writes bench/results/fleet.json.

    python -m bench.fleet [--workers 200] [--jobs 1000] [--owners 50] [--max-lines 1000000]

What it tells: whether claims ever collide, whether every job ends with every line recorded
exactly once, each owner's share of the engine time while every owner still has work
queued (fair: 1/owners), the claim's latency, and what Postgres spends per worker (its CPU
seconds from `pg_stat_statements`-free means: the backend processes' CPU time, and its
connections). Workers are threads in a few processes, each process sharing one connection
pool, as workers on one machine would not, so the connections figure is per process.

The stand-in: a worker claims a shard, runs its windows (`--batches-per-window` static
batches of `--batch-size` lines, `--batch-seconds` each), records each window, closes the
shard, and claims the next (a real worker overlaps claims with its engine; this one does
not, so claims weigh more here than in production). Jobs are sized log-uniformly from 10
to `--max-lines` lines, cut into shards of SHARD_SIZE's default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psutil

from bench.queued_jobs import insert_queued_jobs

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "fleet-bench"
LEASE_SECONDS = 3600.0
START_DELAY_SECONDS = 5.0


def queue_fleet_jobs(url: str, jobs: int, owners: int, max_lines: int, shard_size: int, seed: int) -> dict[str, int]:
    """Jobs of log-uniform sizes, owners round-robin, their shards as the service cuts them; lines per job."""
    chance = random.Random(seed)
    sized = [
        (f"owner-{number % owners:03d}", int(math.exp(chance.uniform(math.log(10), math.log(max_lines)))))
        for number in range(jobs)
    ]
    return insert_queued_jobs(url, sized, MODEL, batch_size=256, shard_size=shard_size)


def run_workers(url: str, process: int, threads: int, args: dict[str, Any], start_at: float) -> dict[str, Any]:
    """One process of simulated workers (threads) sharing one connection pool."""
    import socket

    from app.core.database import Database
    from app.data.claims import WindowResult
    from app.data.models import Worker
    from app.data.queue import JobQueue
    from app.data.records import Records

    db = Database(url)
    queue, records = JobQueue(db), Records(db)
    claims: list[float] = []
    engine_time: list[tuple[str, float, float]] = []  # owner, start, end of each window
    shards_claimed: list[int] = []
    lock = threading.Lock()
    window_lines = args["batch_size"] * args["batches_per_window"]

    def worker(number: int) -> None:
        worker_id = f"fleet-{process}-{number}"
        records.register_worker(
            Worker(
                id=worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                model=MODEL,
                tensor_parallel_size=1,
                status="ready",
            )
        )
        time.sleep(max(0.0, start_at - time.time()))
        while True:
            began = time.perf_counter()
            shard = queue.claim_shard(worker_id, MODEL, LEASE_SECONDS)
            took = time.perf_counter() - began
            if shard is None:
                return
            with lock:
                claims.append(took)
                shards_claimed.append(shard.shard_id)
            seq, line = shard.windows_done, shard.next_line
            while line < shard.end_line:
                end = min(line + window_lines, shard.end_line)
                batches = math.ceil((end - line) / args["batch_size"])
                started = time.time()
                time.sleep(batches * args["batch_seconds"])  # the engine stand-in
                result = WindowResult(
                    first_line=line,
                    next_line=end,
                    prompts=end - line,
                    completed=end - line,
                    failed=0,
                    prompt_tokens=8 * (end - line),
                    completion_tokens=16 * (end - line),
                    generate_seconds=batches * args["batch_seconds"],
                    static_batches=batches,
                )
                queue.record_window(shard, seq, worker_id, result, LEASE_SECONDS)
                with lock:
                    engine_time.append((shard.owner, started, time.time()))
                seq, line = seq + 1, end
            queue.finish_shard(shard, worker_id, stopped=False)

    errors: list[str] = []

    def guarded(number: int) -> None:
        try:
            worker(number)
        except Exception as exc:  # reported, not swallowed: a broken worker skews every figure
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    pool = [threading.Thread(target=guarded, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    db.dispose()
    return {"claims": claims, "engine_time": engine_time, "shards": shards_claimed, "errors": errors}


def postgres_cpu_seconds(url: str) -> float:
    """CPU seconds of the Postgres server on this machine: its processes' own, and the
    postmaster's exited children's (backends whose connections closed)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        try:
            if not (proc.info["name"] or "").startswith("postgres"):
                continue
            times = proc.cpu_times()
            total += times.user + times.system
            if not psutil.Process(proc.ppid()).name().startswith("postgres"):  # the postmaster
                total += times.children_user + times.children_system
        except psutil.Error:
            continue
    return total


def shares(engine_time: list[tuple[str, float, float]], owners: int, until: float) -> dict[str, float]:
    """Each owner's share of the engine time spent before `until`."""
    spent: Counter[str] = Counter()
    for owner, start, end in engine_time:
        spent[owner] += max(0.0, min(end, until) - start)
    total = sum(spent.values()) or 1.0
    return {owner: spent[owner] / total for owner in sorted(spent)}


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from sqlalchemy import text

    from app.core.database import Database
    from app.core.settings import Settings
    from bench.common import percentile

    shard_size = Settings().shard_size
    sizes = queue_fleet_jobs(url, args.jobs, args.owners, args.max_lines, shard_size, args.seed)
    per_process = math.ceil(args.workers / args.processes)
    start_at = time.time() + START_DELAY_SECONDS
    cpu_before = postgres_cpu_seconds(url)
    options = {"batch_size": args.batch_size, "batches_per_window": args.batches_per_window,
               "batch_seconds": args.batch_seconds}  # fmt: skip
    with ProcessPoolExecutor(args.processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_workers, url, p, per_process, options, start_at) for p in range(args.processes)]
        parts = [future.result() for future in futures]
    wall = time.time() - start_at
    cpu = postgres_cpu_seconds(url) - cpu_before
    claims = [c for part in parts for c in part["claims"]]
    engine_time = [w for part in parts for w in part["engine_time"]]
    claimed = [s for part in parts for s in part["shards"]]
    errors = [e for part in parts for e in part["errors"]]
    if not engine_time:
        raise RuntimeError(f"no window ran: {errors[:3]}")
    # The engine time each owner got while every owner still had work: until the first owner's last window began.
    last_start: dict[str, float] = defaultdict(float)
    for owner, start, _ in engine_time:
        last_start[owner] = max(last_start[owner], start)
    contended_until = min(last_start.values())
    owner_shares = shares(engine_time, args.owners, contended_until)
    fair = 1 / args.owners
    worst = max(abs(share - fair) / fair for share in owner_shares.values())
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            recorded = dict(conn.execute(text("SELECT job_id, sum(prompts) FROM windows GROUP BY job_id")).all())
            statuses = Counter(dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()))
    finally:
        db.dispose()
    exact = sum(1 for job_id, lines in sizes.items() if recorded.get(job_id) == lines)
    return {
        "workers": per_process * args.processes,
        "processes": args.processes,
        "jobs": args.jobs,
        "owners": args.owners,
        "lines": sum(sizes.values()),
        "shards": len(claimed),
        "duplicate_claims": len(claimed) - len(set(claimed)),
        "worker_errors": len(errors),
        "first_errors": errors[:3],
        "jobs_recorded_exactly": exact,
        "jobs_finalizing": statuses.get("finalizing", 0),
        "wall_seconds": round(wall, 1),
        "claims_per_second": round(len(claims) / wall, 1),
        "windows_per_second": round(len(engine_time) / wall, 1),
        "claim_median_ms": round(percentile(claims, 0.5) * 1000, 2),
        "claim_p99_ms": round(percentile(claims, 0.99) * 1000, 2),
        "contended_seconds": round(contended_until - start_at, 1),
        "owner_share_worst_deviation": round(worst, 3),
        "owner_share_min": round(min(owner_shares.values()) / fair, 3),
        "owner_share_max": round(max(owner_shares.values()) / fair, 3),
        "postgres_cpu_seconds": round(cpu, 1),
        "postgres_cpu_ms_per_worker_second": round(1000 * cpu / (per_process * args.processes * wall), 3),
        "connections_per_process": "a pool shared by the process's workers (app.core.database defaults)",
        "settings": vars(args) | {"shard_size": shard_size},
    }


def run(config: Any) -> dict[str, Any]:
    """`make bench`'s scenario: this module as a child process."""
    from bench.common import child_env, log_file, read_result

    command = [sys.executable, "-m", "bench.fleet", "--database-url", config.database_url]
    subprocess.run(command, env=child_env(), stdout=log_file("fleet"), stderr=subprocess.STDOUT, check=True)
    result = read_result("fleet")
    assert result is not None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--max-lines", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches-per-window", type=int, default=8)
    parser.add_argument("--batch-seconds", type=float, default=0.05, help="the engine stand-in's time per static batch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    from app.core.migrations import upgrade
    from bench.common import fresh_database, postgres

    with postgres(args.database_url) as server, fresh_database(server, "bench_fleet") as url:
        upgrade(url)
        result = measure(args, url)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
