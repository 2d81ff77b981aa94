"""queue_claims: many queued jobs, several worker processes (each with its own connections)
claiming shards through `JobQueue.claim_shard` as fast as they can until none is
left. Each closes its shard (`finish_shard`, untimed) before the next claim, as a worker
does, so at most one shard per worker runs at a time. Reports claim latency and how many
shards were claimed more than once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from bench.common import BenchConfig, fresh_database, percentile
from bench.queued_jobs import insert_queued_jobs

MODEL = "queue-bench"
LEASE_SECONDS = 3600.0  # longer than the run: a claimed shard is never re-claimable here
START_DELAY_SECONDS = 3.0  # time for every process to start before they claim together


def queue_jobs(database_url: str, jobs: int, owners: Sequence[str] = ("bench",), model: str = MODEL) -> None:
    """`jobs` queued one-line, one-shard batches per owner for `model`, inserted in bulk
    (tests/integration/test_claims.py queues a deep queue with it too)."""
    insert_queued_jobs(database_url, [(owner, 1) for owner in owners for _ in range(jobs)], model, batch_size=64)


def claim_all(database_url: str, worker_number: int, start_at: float) -> tuple[list[int], list[float]]:
    """One worker process: claims until the queue is empty; the shards and each claim's seconds."""
    import os
    import socket

    from app.core.database import Database
    from app.data.models import Worker
    from app.data.queue import JobQueue
    from app.data.records import Records

    db = Database(database_url)
    records = Records(db)
    queue = JobQueue(db)
    worker_id = f"bench-worker-{worker_number}"
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
    queue.claim_shard("bench-nobody", "no-such-model", LEASE_SECONDS)  # opens the pool's connection
    time.sleep(max(0.0, start_at - time.time()))
    shards: list[int] = []
    seconds: list[float] = []
    try:
        while True:
            began = time.perf_counter()
            claimed = queue.claim_shard(worker_id, MODEL, LEASE_SECONDS)
            seconds.append(time.perf_counter() - began)
            if claimed is None:
                return shards, seconds[:-1]  # the last, empty claim is not a claim
            shards.append(claimed.shard_id)
            queue.finish_shard(claimed, worker_id, stopped=False)  # a worker holds one shard at a time
    finally:
        db.dispose()


def run(config: BenchConfig) -> dict[str, Any]:
    with fresh_database(config.database_url, "bench_queue") as url:
        began = time.perf_counter()
        queue_jobs(url, config.queue_jobs)
        insert_seconds = time.perf_counter() - began
        start_at = time.time() + START_DELAY_SECONDS
        workers = config.queue_workers
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            started = time.perf_counter()
            done = list(pool.map(claim_all, [url] * workers, range(workers), [start_at] * workers))
            wall = time.perf_counter() - started - START_DELAY_SECONDS
    claimed = [shard for shards, _ in done for shard in shards]
    latencies = [s for _, seconds in done for s in seconds]
    duplicates = sum(count - 1 for count in Counter(claimed).values() if count > 1)
    return {
        "jobs": config.queue_jobs,
        "workers": workers,
        "insert_seconds": round(insert_seconds, 2),
        "claimed": len(claimed),
        "unclaimed": config.queue_jobs - len(set(claimed)),
        "duplicates": duplicates,
        "claims_per_second": round(len(claimed) / wall, 1),
        "claim_median_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "claim_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "claims_per_worker": [len(shards) for shards, _ in done],
    }
