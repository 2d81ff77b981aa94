"""`make run` / `llm-batch-serve`: the whole service on one machine.

Starts an embedded Postgres under var/ unless DATABASE_URL is set (it stops when the
launcher exits), applies the
migrations, makes the demo models if the configured models are the missing demo ones,
then runs the API (uvicorn), one worker and (unless EMBEDDING_WORKER=false) one
embedding worker (`python -m worker --kind embed`, for /v1/embeddings jobs) as child
processes until interrupted. It supervises them: a child that exits (an engine failure
ends a worker; a crash or a kill ends the API) is started again after a backoff that
doubles while it keeps dying, and a dead embedded Postgres is started again the same way;
nothing ends the launcher but a signal. Its children die with it, even when it is
SIGKILLed: the kernel sends each one SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.backoff import Backoff
from app.core.embedded_postgres import database_url as embedded_or_configured
from app.core.embedded_postgres import restart_if_down
from app.core.migrations import upgrade
from app.core.settings import Settings, get_settings
from app.tools.demo_model import DEFAULT_EMBEDDING_OUTPUT as DEMO_EMBEDDING_MODEL
from app.tools.demo_model import DEFAULT_OUTPUT as DEMO_MODEL
from app.tools.demo_model import ensure_demo_embedding_model, ensure_demo_model
from app.tools.gpu_placement import PlacementError, place, visible_devices, visible_gpus

CHILD_STOP_SECONDS = 60
FIRST_RESTART_SECONDS = 1.0  # the wait before starting a dead child again; it doubles while it keeps dying
MAX_RESTART_SECONDS = 30.0
STAYED_UP_SECONDS = 60.0  # a child up this long has recovered: its next death waits FIRST_RESTART_SECONDS
SUPERVISE_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Runs in each child before it starts (`preexec_fn`): the kernel sends it SIGTERM when
    the launcher dies, however it dies."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: children outlive a SIGKILLed launcher
        pass


class Supervised:
    """A child process started again whenever it exits, with a growing backoff."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name, self.command, self.env = name, command, env
        self.backoff = Backoff(FIRST_RESTART_SECONDS, MAX_RESTART_SECONDS)
        self.process = self._start()
        self.due: float | None = None  # when a dead child is started again

    def _start(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        return subprocess.Popen(self.command, env=self.env, preexec_fn=die_with_parent)

    def check(self) -> None:
        now = time.monotonic()
        if self.due is None and self.process.poll() is not None:
            if now - self.started > STAYED_UP_SECONDS:
                self.backoff.reset()
            code = self.process.returncode
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            wait = self.backoff.next()
            print(f"{self.name} exited ({why}); starting it again in {wait:.0f} s", flush=True)
            self.due = now + wait
        if self.due is not None and now >= self.due:
            self.due = None
            self.process = self._start()


class SupervisedPostgres:
    """The embedded Postgres of this process, started again when its postmaster dies."""

    def __init__(self) -> None:
        self.backoff = Backoff(FIRST_RESTART_SECONDS, MAX_RESTART_SECONDS)
        self.due: float | None = None

    def check(self) -> None:
        if self.due is not None and time.monotonic() < self.due:
            return
        try:
            if restart_if_down():
                print("the embedded Postgres had stopped; it was started again", flush=True)
            self.due = None
            self.backoff.reset()
        except Exception as exc:  # e.g. its port or files still held: try again later
            wait = self.backoff.next()
            print(f"the embedded Postgres could not be started ({exc}); again in {wait:.0f} s", flush=True)
            self.due = time.monotonic() + wait


def _print_admin_key_if_none(database_url: str) -> None:
    """The service never runs open: with no admin key yet, make one and show it once."""
    from app.core.database import Database
    from app.data.keys import create_key
    from app.data.records import Records

    db = Database(database_url)
    try:
        records = Records(db)
        if not records.has_admin_key():
            _, secret = create_key(records, "admin", admin=True, name="made by llm-batch-serve")
            print(f"\nNo admin key existed, so one was made (shown only now):\n\n    {secret}\n", flush=True)
    finally:
        db.dispose()


def api_command(settings: Settings) -> list[str]:
    """The API's command line: uvicorn running API_PROCESSES processes on one port."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.api.main:create_app",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.api_processes),
    ]


MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def api_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The children's environment: with several API processes and no SESSION_SECRET, one
    made here for all of them, so an admin session signed by one is valid on every one."""
    if settings.api_processes > 1 and not settings.session_secret:
        return {**env, "SESSION_SECRET": secrets.token_urlsafe(32)}
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="llm-batch-serve",
        description="Run the API, one worker and one embedding worker (embedded Postgres and local storage "
        "unless configured; EMBEDDING_WORKER=false leaves the embedding worker out).",
    )
    parser.add_argument("--no-worker", action="store_true", help="run the API only")
    parser.add_argument(
        "--workers", type=int, default=1, help="generation worker processes to start (default: %(default)s)"
    )
    args = parser.parse_args()

    settings = get_settings()
    env = dict(os.environ)
    database_url = embedded_or_configured(settings)
    if not settings.database_url:
        env["DATABASE_URL"] = database_url  # the children join this process's embedded server
        print(f"embedded Postgres: {database_url}", flush=True)
    upgrade(database_url)
    env = api_env(settings, env)
    _print_admin_key_if_none(database_url)
    if Path(settings.model).resolve() == DEMO_MODEL.resolve():
        ensure_demo_model(DEMO_MODEL)
    embedding_worker = settings.embedding_worker and not args.no_worker
    if embedding_worker and Path(settings.embedding_model).resolve() == DEMO_EMBEDDING_MODEL.resolve():
        ensure_demo_embedding_model(DEMO_EMBEDDING_MODEL)

    # glibc's malloc, told to give big buffers back: two arenas, not one per thread, and a fixed
    # mmap threshold (by default it grows, and freed 8 MiB upload buffers stay in the heap).
    # A 300 MB upload in parts grows the API by about 65 MB with them, 110 MB without.
    api_only = {name: env.get(name, value) for name, value in MALLOC_SETTINGS.items()}
    children = [Supervised("API", api_command(settings), {**env, **api_only})]
    kinds = [] if args.no_worker else ["generate"] * args.workers + (["embed"] if embedding_worker else [])
    try:  # each worker its GPUs, or its share of one: two engines never ask for more than there is
        placements = place(
            kinds,
            visible_gpus() if kinds else 0,
            settings.tensor_parallel_size,
            settings.gpu_memory_utilization,
            settings.embedding_gpu_memory_utilization,
        )
    except PlacementError as exc:
        sys.exit(f"llm-batch-serve: {exc}")
    visible = visible_devices()
    for index, (kind, placement) in enumerate(zip(kinds, placements, strict=True)):
        worker_env = {**env, **(placement.env(kind, visible) if placement else {})}
        if placement:
            print(f"{kind} worker {index}: GPUs {worker_env['CUDA_VISIBLE_DEVICES']}", flush=True)
        children.append(Supervised(f"{kind} worker", [sys.executable, "-m", "worker", "--kind", kind], worker_env))
    postgres = None if settings.database_url else SupervisedPostgres()
    print(f"API on http://{settings.host}:{settings.port} (docs at /docs); Ctrl-C stops everything", flush=True)

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            if postgres is not None:
                postgres.check()
            for child in children:
                child.check()
            time.sleep(SUPERVISE_SECONDS)
    finally:
        processes = [child.process for child in children]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_SECONDS
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
    sys.exit(0)


if __name__ == "__main__":
    main()
