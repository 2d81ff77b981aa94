"""What every scenario shares: its settings, the prompts, percentiles, databases, result files."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = RESULTS / "logs"
MIN_OUTPUT_TOKENS = 4  # the short end of the output-length spread
PORT_WAIT_SECONDS = 600  # a 70B model takes minutes to load


@dataclass(frozen=True)
class BenchConfig:
    """The harness's settings, passed whole to every scenario."""

    model: str
    tensor_parallel_size: int = 1
    runs: int = 3
    prompts: int = 512  # static_vs_continuous: prompts per run
    max_tokens: int = 128  # the long end of the output-length spread
    lines: int = 2048  # service_overhead and peer: lines per job
    seed: int = 1234
    ingest_bytes: int = 1 << 30
    poll_clients: int = 100
    poll_seconds: float = 30.0
    poll_interval: float = 1.0
    queue_jobs: int = 10_000
    queue_workers: int = 4
    scale_out_lines: int = 4000
    max_model_len: int | None = None
    database_url: str = ""  # a server URL; each scenario gets its own database there
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_lengths(count: int, longest: int, seed: int) -> list[int]:
    """`max_tokens` per prompt, log-uniform from MIN_OUTPUT_TOKENS to `longest`: many short
    answers, a tail of long ones; the same seed gives the same list on every machine."""
    rng = random.Random(seed)
    low, high = math.log(MIN_OUTPUT_TOKENS), math.log(max(longest, MIN_OUTPUT_TOKENS))
    return [round(math.exp(rng.uniform(low, high))) for _ in range(count)]


def prompt_text(index: int) -> str:
    return f"benchmark document number {index}: summarise the findings of the report"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(run[key]) for run in runs)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median of every numeric figure over the runs."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {key: round(median_of(runs, key), 4) for key in keys}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json, stamped with the machine and commit it was measured on."""
    from bench.machine import stamp

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result | {"measured": stamp()}, indent=2) + "\n")
    return path


def write_part(name: str, part: str, figures: dict[str, Any]) -> Path:
    """One part of a scenario's result file, written by the script that measures it alone;
    the file's other parts kept (the scale_out scenario's two)."""
    found = read_result(name) or {}
    found.pop("skipped", None)
    found.pop("measured", None)
    return write_result(name, found | {part: figures})


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: Any, timeout: float = PORT_WAIT_SECONDS) -> None:
    """Waits until something listens on `port`, failing early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}; see {LOGS}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def database_on(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url` (query options such as a socket kept)."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


@contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """A new, migrated database `name` on the server, dropped afterwards."""
    import psycopg

    from app.core.migrations import upgrade

    admin = database_on(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_on(server_url, name)
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def log_file(name: str) -> Any:
    LOGS.mkdir(parents=True, exist_ok=True)
    return open(LOGS / f"{name}.log", "wb")  # kept open for a child process


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


@contextmanager
def postgres(database_url: str | None) -> Iterator[str]:
    """The given server (or DATABASE_URL's), else an embedded one for the length of the run."""
    database_url = database_url or os.environ.get("DATABASE_URL")
    if database_url:
        yield database_url
        return
    from app.core.embedded_postgres import start_embedded_postgres

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        url, server = start_embedded_postgres(Path(tmp))
        try:
            yield url
        finally:
            server.cleanup()


def run_alone(
    name: str, run: Callable[[BenchConfig], dict[str, Any]], runs: int, model: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """A scenario run on its own (`python -m bench.<name>`): the demo model unless `model`,
    an embedded Postgres, the result written to bench/results/<name>.json and returned."""
    from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model

    chosen = model or str(ensure_demo_model(DEFAULT_OUTPUT))
    with postgres(None) as server:
        result = run(BenchConfig(model=chosen, runs=runs, database_url=server, extra=extra))
    write_result(name, result)
    return result
