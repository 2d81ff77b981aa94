"""`make run` / `llm-batch-serve`: the whole service on one machine.

Starts an embedded Postgres under var/ unless DATABASE_URL is set (it stops when the
launcher exits), applies the
migrations, makes the demo models if the configured models are the missing demo ones,
then runs the API (uvicorn), one worker and (unless EMBEDDING_WORKER=false) one
embedding worker (`python -m worker --kind embed`, for /v1/embeddings jobs) as child
processes until interrupted; a worker that exits (an engine failure ends one) is
started again.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.embedded_postgres import database_url as embedded_or_configured
from app.core.migrations import upgrade
from app.core.settings import Settings, get_settings
from app.tools.demo_model import DEFAULT_EMBEDDING_OUTPUT as DEMO_EMBEDDING_MODEL
from app.tools.demo_model import DEFAULT_OUTPUT as DEMO_MODEL
from app.tools.demo_model import ensure_demo_embedding_model, ensure_demo_model

CHILD_STOP_SECONDS = 60
WORKER_RESTART_SECONDS = 2


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

    api = subprocess.Popen(api_command(settings), env=env)

    def start_worker(kind: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "worker", "--kind", kind], env=env)

    kinds = [] if args.no_worker else ["generate"] * args.workers + (["embed"] if embedding_worker else [])
    workers = [start_worker(kind) for kind in kinds]
    print(f"API on http://{settings.host}:{settings.port} (docs at /docs); Ctrl-C stops everything", flush=True)

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and api.poll() is None:
            for i, worker in enumerate(workers):
                if worker.poll() is not None:  # an engine failure ends a worker; start a fresh one
                    print(f"{kinds[i]} worker exited with {worker.returncode}; starting another", flush=True)
                    time.sleep(WORKER_RESTART_SECONDS)
                    workers[i] = start_worker(kinds[i])
            time.sleep(0.5)
    finally:
        children = [api, *workers]
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_SECONDS
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
    sys.exit(0 if stopping else 1)


if __name__ == "__main__":
    main()
